"""Sensitivity scan: each unit compressed alone at each of its levels, accuracy on a subset.

A cheap pass before the search (no latency measurement, a subset of the validation data): its
table says how much accuracy each (unit, level) costs on its own. The search uses it to

- **shrink the space**: a level whose accuracy drop alone already breaks the constraint (beyond
  the subset's noise) is dropped, with every stronger level of that unit (compression only
  loses more accuracy as it grows);
- **seed the study**: allocations that fit the accuracy budget when the drops are taken as
  additive (the usual assumption of sensitivity-based allocation, as in NNCF's and HAQ's
  layer-wise schemes), greedily filling each budget with the cheapest (unit, level) steps
  first, at a few budgets around the constraint.

The table is kept in the study (so a resumed search shrinks the space the same way), written
as ``sensitivity.csv`` and drawn as ``sensitivity.png`` beside the front.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tightfit.evaluators.accuracy import noise_margin
from tightfit.objectives import OBJECTIVES, Objective
from tightfit.spaces import Candidate, CompressionSpace, Unit
from tightfit.workdir import atomic_write

ACCURACY = OBJECTIVES["accuracy"]

#: Budgets of the seeds, as multiples of the accuracy constraint.
SEED_BUDGETS = (0.5, 1.0, 2.0, 0.25, 4.0)


@dataclass(frozen=True)
class Probe:
    """One row of the scan: ``unit`` alone at ``level``."""

    unit: Unit
    level: int

    @property
    def value(self) -> Any:
        return self.unit.choices[self.level]

    def candidate(self, space: CompressionSpace) -> Candidate:
        return Candidate.from_params(
            space.base_model, {self.unit.param_name: self.value}, seed=space.seed
        )


def probes(space: CompressionSpace) -> list[Probe]:
    """Every unit at every level but the no-op."""
    return [Probe(u, k) for u in space.units for k in range(1, len(u.choices))]


def table(
    rows: Sequence[tuple[Probe, float, float]], baseline: float, quality: Objective = ACCURACY
) -> pd.DataFrame:
    """The scan as a table: (probe, subset quality, size in MB) per row. The columns keep their
    first names: ``accuracy`` is the quality objective's value (accuracy or perplexity) and
    ``accuracy_drop`` its loss against ``baseline`` (> 0: worse; relative for perplexity)."""
    return pd.DataFrame(
        [
            {
                "param": p.unit.param_name,
                "knob": p.unit.knob,
                "level": p.level,
                "value": p.value,
                "accuracy": accuracy,
                "accuracy_drop": quality.loss(baseline, accuracy),
                "size_mb": size,
            }
            for p, accuracy, size in rows
        ]
    )


def shrink(
    space: CompressionSpace,
    scan: pd.DataFrame,
    max_drop: float,
    n: int,
    z: float,
    quality: Objective = ACCURACY,
) -> tuple[CompressionSpace, dict[str, list[Any]]]:
    """The space without the levels that break the constraint alone (and stronger ones).

    A level is dropped when its loss exceeds ``max_drop`` by more than its noise on the subset
    of ``n`` samples (:func:`tightfit.evaluators.accuracy.noise_margin`). Returns the new space and, per unit, the values dropped; units
    left with only the no-op leave the space.
    """
    units: list[Unit] = []
    dropped: dict[str, list[Any]] = {}
    by_param = {param: rows for param, rows in scan.groupby("param")}
    for u in space.units:
        keep = len(u.choices)
        rows = by_param.get(u.param_name)
        if rows is not None:
            for _, r in rows.sort_values("level").iterrows():
                failed = not math.isfinite(r["accuracy"])  # it could not even be compressed
                margin = noise_margin(quality, r["accuracy"], n, z, max_drop)
                if failed or r["accuracy_drop"] - max_drop > margin:
                    keep = int(r["level"])
                    break
        if keep < len(u.choices):
            dropped[u.param_name] = list(u.choices[keep:])
        if keep > 1:
            units.append(Unit(u.path, u.knob, u.choices[:keep], u.info))
    return CompressionSpace(units, space.base_model, space.seed), dropped


def allocation(space: CompressionSpace, scan: pd.DataFrame, budget: float) -> Candidate:
    """Greedy: raise units one level at a time, the step costing least accuracy first, while
    the sum of the chosen levels' drops (negative ones count as 0) stays within ``budget``."""
    drop = {
        (r["param"], int(r["level"])): max(0.0, float(r["accuracy_drop"]))
        for _, r in scan.iterrows()
        if math.isfinite(r["accuracy_drop"])
    }
    level = {u.param_name: 0 for u in space.units}
    spent = 0.0
    while True:
        steps = []
        for u in space.units:
            k = level[u.param_name] + 1
            if k < len(u.choices) and (u.param_name, k) in drop:
                before = drop.get((u.param_name, k - 1), 0.0)
                steps.append((drop[(u.param_name, k)] - before, u.param_name, k))
        steps = [s for s in steps if spent + s[0] <= budget + 1e-12]
        if not steps:
            break
        cost, param, k = min(steps)
        level[param] = k
        spent += cost
    values = {u.param_name: u.choices[level[u.param_name]] for u in space.units}
    return Candidate.from_params(space.base_model, values, seed=space.seed)


def seeds(space: CompressionSpace, scan: pd.DataFrame, max_drop: float, k: int) -> list[Candidate]:
    """Up to ``k`` distinct allocations at budgets around ``max_drop`` (see ``SEED_BUDGETS``)."""
    out: list[Candidate] = []
    for factor in SEED_BUDGETS:
        if len(out) >= k:
            break
        c = allocation(space, scan, factor * max_drop)
        if not c.is_baseline and c not in out:
            out.append(c)
    return out


def figure_png(
    scan: pd.DataFrame, path: Path, title: str, loss_name: str = "accuracy_drop"
) -> Path:
    """Quality loss of each unit (rows) at each level (columns): where compression hurts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = scan.pivot_table(index="param", columns="level", values="accuracy_drop")
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(grid) + 1.5), dpi=110)
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="Reds", vmin=0)
    ax.set_yticks(range(len(grid)), grid.index, fontsize=6)
    ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns])
    ax.set_xlabel("level (0 = no-op; higher = stronger)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=f"{loss_name.replace('_', ' ')} (subset)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write(path, buffer.getvalue())
