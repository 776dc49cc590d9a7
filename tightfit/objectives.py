"""The objectives a search can optimise, and the direction of each: the one table of them.

Every part that compares two results reads it: the config (Optuna's study directions), the
latency pre-screen (is a predicted point dominated?), the front's knee and its hypervolume.
A quality objective may go either way (accuracy up, perplexity down), so nothing else may
assume that the quality objective is maximised.

Examples:
    >>> from tightfit import objectives
    >>> objectives.direction("latency_ms")
    'minimize'
    >>> objectives.dominates({"accuracy": 0.9, "latency_ms": 1.0},
    ...                      {"accuracy": 0.9, "latency_ms": 2.0})
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Objective:
    """One objective: its name, which way is better, and what it measures.

    A quality objective also says how a candidate's **loss** against the baseline is counted
    (``loss_name``, > 0 when worse): an absolute drop for accuracy, a relative increase for
    perplexity (+5% reads 0.05). Its constraint (``constraints.<constraint>``) caps that loss.
    """

    name: str
    direction: Direction
    kind: Literal["quality", "latency", "size"]
    doc: str
    loss_name: str = ""
    relative: bool = False
    constraint: str = ""

    @property
    def sign(self) -> float:
        """Multiplying a value by this makes lower better."""
        return -1.0 if self.direction == "maximize" else 1.0

    def loss(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline`` (> 0: worse; relative for perplexity)."""
        worse = self.sign * (value - baseline)
        return worse / abs(baseline) if self.relative and baseline else worse


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "accuracy", "maximize", "quality",
            "the data's metric on validation, higher is better (top-1 by default)",
            loss_name="accuracy_drop", constraint="max_accuracy_drop",
        ),
        Objective(
            "perplexity", "minimize", "quality",
            "the data's perplexity on validation, lower is better",
            loss_name="perplexity_increase", relative=True,
            constraint="max_perplexity_increase",
        ),
        Objective("latency_ms", "minimize", "latency", "measured on the profile's runtime"),
        Objective("size_mb", "minimize", "size", "the exported engine's bytes"),
    )
}  # fmt: skip
QUALITY = "accuracy"  # the default quality objective
QUALITIES = tuple(o.name for o in OBJECTIVES.values() if o.kind == "quality")


def quality_of(names: Sequence[str] | None) -> Objective:
    """The one quality objective among ``names`` (a config's objectives, or a study's
    ``metric_names``; a study that kept none was searched on the default, accuracy)."""
    if not names:
        return OBJECTIVES[QUALITY]
    found = [OBJECTIVES[n] for n in names if n in OBJECTIVES and OBJECTIVES[n].kind == "quality"]
    if len(found) != 1:
        raise ValueError(
            f"objectives must name exactly one quality objective ({', '.join(QUALITIES)}); "
            f"got {list(names)}"
        )
    return found[0]


def get(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}"
        ) from None


def direction(name: str) -> Direction:
    return get(name).direction


def sign(name: str) -> float:
    """+1 where lower is better, -1 where higher is: ``sign * value`` is to be minimised."""
    return get(name).sign


def dominates(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """``a`` is at least as good as ``b`` in every objective they share, and better in one."""
    keys = [k for k in a if k in b]
    pairs = [(sign(k) * a[k], sign(k) * b[k]) for k in keys]
    return bool(pairs) and all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def relative_to_baseline(value: float, baseline: float, name: str) -> float:
    """``value`` as a fraction of the way from the baseline (0 for maximised objectives, 1 for
    minimised ones) to nothing: the coordinates the front's hypervolume is computed in, where
    the reference point is 1.0 in every objective.

    A maximised objective counts as its drop below the baseline (0 = baseline, 1 = zero); a
    minimised cost (latency, size) as a fraction of the baseline's value (1 = baseline); a
    minimised quality objective (perplexity) as its relative increase (0 = baseline, 1 =
    doubled): a compressed model is rarely better than its baseline there, and a reference
    at the baseline would leave every such point out.
    """
    objective = get(name)
    if objective.kind == "quality" and objective.direction == "minimize":
        return objective.loss(baseline, value) if objective.relative else value - baseline
    if objective.sign < 0:
        return (baseline - value) / max(abs(baseline), 1e-12)
    return value / baseline if baseline else float("inf")


def hypervolume(
    points: Sequence[Mapping[str, float]], baseline: Mapping[str, float], names: Sequence[str]
) -> float:
    """Hypervolume of ``points`` (dominated ones may be among them) in baseline-relative
    coordinates (:func:`relative_to_baseline`), reference point 1.0 in each objective; points
    worse than the reference add nothing."""
    from tightfit._optuna_private import hypervolume as _hv

    rows = [[relative_to_baseline(p[n], baseline[n], n) for n in names] for p in points]
    arr = np.asarray(rows, dtype=float).reshape(-1, len(names))
    arr = arr[(arr < 1.0).all(axis=1)]
    if len(arr) == 0:
        return 0.0
    return _hv(arr, np.ones(len(names)))
