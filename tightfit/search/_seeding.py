"""What a study starts from: the sensitivity scan (each unit alone) and the seeds.

The scan compresses each (unit, level) alone, scores it on the validation subset, then shrinks
the space to the levels that can still meet the accuracy constraint. The seeds are enqueued
trials: the baseline, then a baseline strategy's whole sweep, or a few seeds of each baseline
(the standard recipe, uniform, evenly spaced blocks dropped, sensitivity-allocated,
global magnitude).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from tightfit.config import SearchConfig
from tightfit.keys import StudyAttr, TrialAttr
from tightfit.search import sensitivity, strategies
from tightfit.search._executor import Executor
from tightfit.spaces import DROP, Candidate, CompressionSpace
from tightfit.workdir import atomic_write
from tightfit.workspace import Setup, Workspace

log = logging.getLogger(__name__)

# the depth seeds' share of each stack dropped: 6 blocks lose 1 then 2, 30 lose 5 then 10
DEPTH_FRACTIONS = (1 / 6, 1 / 3)


def scan(
    study: optuna.Study, executor: Executor, setup: Setup, space: CompressionSpace, ws: Workspace
) -> pd.DataFrame | None:
    """The sensitivity table: the study's saved one, a new scan (saved in the study), or None
    where the study began without one (its space stays as it was)."""
    attrs = study.user_attrs
    if StudyAttr.SENSITIVITY in attrs:
        return pd.DataFrame(attrs[StudyAttr.SENSITIVITY])
    if study.trials:
        log.info("sensitivity scan skipped: study %s began without one", study.study_name)
        return None
    t0 = time.monotonic()
    probes = sensitivity.probes(space)
    refs = [executor.compress(setup, p.candidate(space), True) for p in probes]
    rows = []
    for probe, ref in zip(probes, refs, strict=True):
        try:
            one = executor.get(ref)
            rows.append((probe, one.accuracy, one.size_mb))
        except Exception as e:  # a level that cannot be applied alone: dropped by shrink
            log.warning(
                "sensitivity %s=%s failed: %s",
                probe.unit.param_name,
                probe.value,
                executor.error_text(e),
            )
            rows.append((probe, float("nan"), float("nan")))
    table = sensitivity.table(rows, ws.baseline_subset_accuracy, setup.config.quality)
    study.set_user_attr(StudyAttr.SENSITIVITY, table.to_dict("records"))
    study.set_user_attr(StudyAttr.SENSITIVITY_S, time.monotonic() - t0)
    return table


def shrink(
    config: SearchConfig,
    space: CompressionSpace,
    table: pd.DataFrame,
    n_subset: int,
    summary_dir: Path,
    title: str,
) -> tuple[CompressionSpace, dict[str, float], list[Path]]:
    """The space without the levels the scan rules out (``sensitivity.shrink``); the metrics
    and the files (table, figure, the space and what was dropped) to log."""
    metrics: dict[str, float] = {}
    if config.sensitivity.shrink:
        quality = config.quality
        limit = config.constraints.limit(quality)
        space, dropped = sensitivity.shrink(space, table, limit, n_subset, config.staged.z, quality)
        metrics["n_levels_dropped"] = float(sum(len(v) for v in dropped.values()))
        atomic_write(summary_dir / "space.json", json.dumps(space.describe(), indent=1))
        atomic_write(summary_dir / "dropped_levels.json", json.dumps(dropped, indent=1))
    files = [
        atomic_write(summary_dir / "sensitivity.csv", table.to_csv(index=False)),
        sensitivity.figure_png(
            table, summary_dir / "sensitivity.png", title, config.quality.loss_name
        ),
    ]
    return space, metrics, files


def plan(
    config: SearchConfig, space: CompressionSpace, ws: Workspace, table: pd.DataFrame | None
) -> list[tuple[str, Candidate]]:
    """The baseline, then either the strategy's whole sweep (a baseline strategy) or a few
    seeds of each baseline (``seeds``), as (kind, candidate), without repeats."""
    s = space
    planned = [("baseline", s.baseline())]
    strategy = config.strategy
    recipe = strategies.recipe(s, ws.ctx.profile.generation is not None)
    if strategy == "recipe":
        return planned + [(strategy, c) for c in recipe]
    if strategy == "uniform":
        return planned + [(strategy, c) for c in strategies.uniform_sweep(s, config.seed)]
    if strategy == "global_magnitude":
        importance = strategies.channel_importance(ws.model, ws.ctx)
        sweep = strategies.global_magnitude_sweep(s, importance, seed=config.seed)
        return planned + [(strategy, c) for c in sweep]
    uniform = [
        s.uniform(bits=8),
        s.uniform(prune_ratio=0.25, bits=8),
        s.uniform(rank_fraction=0.5, bits=8),
        s.uniform(prune_ratio=0.375, rank_fraction=0.75, bits=8),
        s.uniform(prune_ratio=0.25),
        s.uniform(rank_fraction=0.5),
    ]
    seeds = config.seeds
    if seeds.recipe:  # first: the point every result is compared with
        planned += [("recipe", c) for c in recipe]
    planned += [("uniform", c) for c in uniform[: seeds.uniform]]
    if seeds.depth and any(u.knob == DROP for u in s.units):
        shallower = [s.uniform(bits=8, drop_fraction=f) for f in DEPTH_FRACTIONS]
        planned += [("depth", c) for c in shallower[: seeds.depth] if not c.is_baseline]
    k = config.sensitivity.seeds
    if table is not None and k:
        limit = config.constraints.limit(config.quality)
        planned += [("sensitivity", c) for c in sensitivity.seeds(s, table, limit, k)]
    if seeds.global_magnitude:
        importance = strategies.channel_importance(ws.model, ws.ctx)
        sweep = strategies.global_magnitude_sweep(s, importance)
        # with int8 where the space has it: the allocation practitioners deploy
        quantized = [c for c in sweep if c.bits] or sweep
        chosen = strategies.spread(quantized, seeds.global_magnitude)
        planned += [("global_magnitude", c) for c in chosen]
    unique: list[tuple[str, Candidate]] = []
    for kind, c in planned:
        if all(c != other for _, other in unique):
            unique.append((kind, c))
    return unique


def enqueue(study: optuna.Study, space: CompressionSpace, planned: list[Any]) -> None:
    study.set_user_attr(StudyAttr.N_PLANNED, len(planned))
    for kind, c in planned:
        study.enqueue_trial(space.params_of(c), user_attrs={TrialAttr.SEED_KIND: kind})
