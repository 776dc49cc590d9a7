"""Candidate: the frozen record that fully determines one compressed model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field, model_serializer

from tightfit._records import Record

KNOBS = ("prune_ratio", "rank", "bits")
DROP = "drop"  # the depth kernel's knob: a block (a module path) removed whole


class Candidate(Record):
    """What to do to each unit of a base model; replayed, never pickled.

    ``prune`` maps a coupled group (named by its root module path) to the fraction of channels
    removed; ``rank`` maps a Linear/Conv path to its rank as a fraction of the layer's break-even
    rank (1.0 or absent: not factorized); ``bits`` maps a layer path to 8 or 4 (absent: fp32).
    Entries that do nothing are dropped, so equal models have equal candidates: no-op levels,
    and every choice for a unit inside a block the depth kernel drops (knob ``drop``).

    ``other`` holds the knobs of kernels registered beyond these three, by knob: ``{knob:
    {unit path: value}}``, with the units at their first (no-op) level left out by the space.
    """

    base_model: str = Field(description="content hash of the base model")
    prune: dict[str, float] = Field(default_factory=dict)
    rank: dict[str, float] = Field(default_factory=dict)
    bits: dict[str, int] = Field(default_factory=dict)
    other: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seed: int = 0

    def model_post_init(self, __context: Any) -> None:
        # Normalise without mutating a frozen record's identity: no-op entries are dropped, and
        # so are the moot ones, inside a dropped block.
        dropped = tuple(f"{p}." for p, v in self.other.get(DROP, {}).items() if v)

        def kept(path: str) -> bool:
            return not path.startswith(dropped)

        def live(plan: dict[str, Any], keep: Callable[[Any], bool]) -> dict[str, Any]:
            return {k: v for k, v in sorted(plan.items()) if keep(v) and kept(k)}

        object.__setattr__(self, "prune", live(self.prune, lambda v: v > 0))
        object.__setattr__(self, "rank", live(self.rank, lambda v: v < 1.0))
        object.__setattr__(self, "bits", live(self.bits, lambda v: v < 32))
        other = {
            knob: plan
            for knob, p in sorted(self.other.items())
            if (plan := live(p, bool) if knob == DROP else live(p, lambda v: True))
        }
        object.__setattr__(self, "other", other)

    @model_serializer(mode="wrap")
    def _without_empty_other(self, handler: Any) -> Any:
        """A candidate of the three built-in knobs serialises as before ``other`` existed."""
        data = handler(self)
        if isinstance(data, dict) and not data.get("other"):
            data.pop("other", None)
        return data

    @property
    def is_baseline(self) -> bool:
        return not (self.prune or self.rank or self.bits or self.other)

    def plan_for(self, knob: str) -> dict[str, Any]:
        """The per-unit values of one knob (``prune_ratio``, ``rank``, ``bits`` or another
        registered kernel's)."""
        plans: dict[str, dict[str, Any]] = {
            "prune_ratio": self.prune,
            "rank": self.rank,
            "bits": self.bits,
        }
        return plans[knob] if knob in plans else self.other.get(knob, {})

    def to_params(self) -> dict[str, Any]:
        """Optuna-style params ``<module path>.<knob>`` (only the entries that do something)."""
        out: dict[str, Any] = {}
        out.update({f"{k}.prune_ratio": v for k, v in self.prune.items()})
        out.update({f"{k}.rank": v for k, v in self.rank.items()})
        out.update({f"{k}.bits": v for k, v in self.bits.items()})
        for knob, plan in self.other.items():
            out.update({f"{k}.{knob}": v for k, v in plan.items()})
        return out

    @classmethod
    def from_params(cls, base_model: str, params: dict[str, Any], seed: int = 0) -> Candidate:
        prune: dict[str, float] = {}
        rank: dict[str, float] = {}
        bits: dict[str, int] = {}
        other: dict[str, dict[str, Any]] = {}
        for name, value in params.items():
            path, _, knob = name.rpartition(".")
            if not path or not knob.isidentifier():
                raise ValueError(f"param '{name}' is not '<module path>.<knob>'")
            if knob == "prune_ratio":
                prune[path] = float(value)
            elif knob == "rank":
                rank[path] = float(value)
            elif knob == "bits":
                bits[path] = int(value)
            else:  # another registered kernel's knob
                other.setdefault(knob, {})[path] = value
        return cls(base_model=base_model, prune=prune, rank=rank, bits=bits, other=other, seed=seed)

    def summary(self) -> dict[str, float]:
        """A few numbers that describe the candidate at a glance (logged as MLflow params)."""
        return {
            "n_pruned_groups": len(self.prune),
            "mean_prune_ratio": round(sum(self.prune.values()) / len(self.prune), 4)
            if self.prune
            else 0.0,
            "n_factorized": len(self.rank),
            "n_int8": sum(1 for b in self.bits.values() if b == 8),
            "n_int4": sum(1 for b in self.bits.values() if b == 4),
            "n_dropped_blocks": len(self.other.get(DROP, {})),
        }
