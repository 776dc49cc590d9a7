"""What a search returns, and what it reports while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from tightfit.config import SearchConfig


@dataclass(frozen=True)
class Progress:
    """One profile's progress, reported after every trial (``run_search(progress=...)``)."""

    profile: str
    done: int
    total: int
    failed: int
    best_speedup: float | None  # the best feasible speedup so far, if any


@dataclass
class ProfileOutcome:
    """One hardware profile's search: its study, its feasible Pareto front and its baseline."""

    profile: str
    study: optuna.Study
    front: pd.DataFrame
    baseline: dict[str, float]
    summary_dir: Path
    n_complete: int
    n_failed: int
    aa_check: dict[str, Any] | None = None  # the baseline measured against itself
    n_refused: int = 0  # parts of the model not searched (summary_dir / "refused.json")
    n_units: int = 0  # searched units, after the sensitivity scan shrank the space
    int8_format: str = "static"  # the format every int8 layer of the trials used
    int8_activation_type: str = "QUInt8"  # ... and the activation type of static int8


@dataclass
class SearchOutcome:
    """Every profile's outcome; ``front(profile)`` looks one up by name.

    Examples:
        >>> outcome = tightfit.run_search("examples/digits.yaml")  # doctest: +SKIP
        >>> outcome.front("cpu-ort")[["trial", "accuracy", "latency_ms"]]  # doctest: +SKIP
    """

    config: SearchConfig
    workdir: Path
    ui_url: str
    profiles: list[ProfileOutcome] = field(default_factory=list)
    wall_s: float = 0.0  # the driver loop's wall time, over every profile
    wait_s: float = 0.0  # of which, waiting on workers

    def profile(self, name: str) -> ProfileOutcome:
        for p in self.profiles:
            if p.profile == name:
                return p
        raise KeyError(
            f"no profile {name!r} in this search; it ran {', '.join(p.profile for p in self.profiles)}"
        )

    def front(self, name: str | None = None) -> pd.DataFrame:
        """The feasible Pareto front of profile ``name`` (of the only one, if None)."""
        if name is None:
            if len(self.profiles) != 1:
                raise ValueError(
                    "this search ran several profiles "
                    f"({', '.join(p.profile for p in self.profiles)}); name one"
                )
            return self.profiles[0].front
        return self.profile(name).front
