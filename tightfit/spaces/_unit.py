"""What discovery finds in a model: the units a kernel can act on, and the parts it refuses.

Plain records (no torch): the space, the Candidate and the search read them; the kernels
(``kernels.discover``) make them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Unit:
    """One searchable knob: a module path, the knob's name and its choices.

    Choices are ordered from the no-op (first) to the strongest compression (last): a unit's
    *level* is an index into them, so samplers see an ordered integer per unit.
    """

    path: str
    knob: str
    choices: tuple[Any, ...]
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def param_name(self) -> str:
        """``<module path>.<knob>``: the name of the unit's value (Candidate params, MLflow)."""
        return f"{self.path}.{self.knob}"

    @property
    def level_name(self) -> str:
        """``<module path>.<knob>.level``: the name of the Optuna param (an index into choices)."""
        return f"{self.path}.{self.knob}.level"


@dataclass(frozen=True)
class Refusal:
    """A part of the model a kernel will not act on, and why: decided when the space is
    discovered, so no trial is spent on it."""

    path: str
    knob: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "knob": self.knob, "reason": self.reason}
