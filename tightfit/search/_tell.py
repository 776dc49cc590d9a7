"""How a trial ends, in one place: what Optuna is told and what its MLflow run records.

Every path (complete, failed, stopped by staged evaluation, pre-screened as dominated) builds
a :class:`Told` and goes through :func:`tell` and :func:`record`, so the study and the runs
cannot disagree on what a trial was.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from tightfit.config import SearchConfig
from tightfit.evaluators import LatencyResult
from tightfit.keys import Status, Tag, TrialAttr
from tightfit.spaces import Candidate
from tightfit.workspace import StageOne

STATES = {
    Status.COMPLETE: TrialState.COMPLETE,
    Status.FAILED: TrialState.FAIL,
    Status.STOPPED: TrialState.PRUNED,
    Status.PRESCREENED: TrialState.PRUNED,
    Status.REPEAT: TrialState.PRUNED,
}


@dataclass
class Told:
    status: str  # a key of STATES: the MLflow run's tightfit.status
    values: list[float] | None = None  # the objectives, in the config's order (complete only)
    constraints: dict[str, float] = field(default_factory=dict)  # > 0: violated by that much
    attrs: dict[str, Any] = field(default_factory=dict)  # the trial's user attributes
    metrics: dict[str, float] = field(default_factory=dict)
    feasible: bool | None = None
    error: str | None = None
    artifacts: dict[str, Any] | None = None
    tags: dict[str, str] | None = None

    @property
    def state(self) -> TrialState:
        return STATES[self.status]


def tell(study: optuna.Study, trial: optuna.Trial, told: Told) -> None:
    for name, excess in told.constraints.items():
        trial.set_constraint(name, excess)
    for key, value in told.attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, told.values, state=told.state)


def repeated(config: SearchConfig, earlier: optuna.trial.FrozenTrial) -> Told:
    """A trial whose candidate ``earlier`` already evaluated (a sampler proposed it again, or
    levels that differ only inside a dropped block): not rebuilt, not measured.

    Told PRUNED with ``earlier``'s constraints, not COMPLETE with its values: a second copy of a
    point would sit on the front beside it (and be re-measured and exported twice), and TPE
    ranks a feasible pruned trial below the complete ones, which moves it away from a point it
    already has. Its run shows ``earlier``'s objectives.
    """
    loss = config.quality.loss_name
    attrs: dict[str, Any] = {TrialAttr.STAGE: Status.REPEAT, TrialAttr.REPEAT_OF: earlier.number}
    metrics: dict[str, float] = {}
    if earlier.values is not None:
        metrics.update(zip(config.objectives, earlier.values, strict=True))
    for key in (loss, TrialAttr.SPEEDUP):
        if key in earlier.user_attrs:
            attrs[key] = metrics[key] = earlier.user_attrs[key]
    return Told(
        Status.REPEAT,
        constraints=dict(earlier.constraints),
        attrs=attrs,
        metrics=metrics,
        feasible=False,  # not a point of its own: earlier's run carries its feasibility
        tags={Tag.STAGE: Status.REPEAT, Tag.REPEAT_OF: str(earlier.number)},
    )


def _excess(config: SearchConfig, baseline: dict[str, float], one: StageOne) -> float:
    """How far ``one``'s quality loss exceeds its constraint (<= 0: within it)."""
    return config.loss_excess(baseline[config.quality.name], one.accuracy)


def _loss(config: SearchConfig, baseline: dict[str, float], one: StageOne) -> float:
    """``one``'s quality loss against the baseline (the accuracy drop, the relative perplexity
    increase), > 0 when worse."""
    return config.quality.loss(baseline[config.quality.name], one.accuracy)


def failed(reason: str) -> Told:
    return Told(Status.FAILED, attrs={TrialAttr.ERROR: reason}, error=reason)


def error_kind(reason: str) -> str:
    """A failure reason without its numbers and hashes: two trials failing for the same cause
    (``base model 3f2a... now returns 9b1c...``) have the same kind."""
    return re.sub(r"[0-9a-f]{8,}|\d+(\.\d+)?", "#", reason.splitlines()[0] if reason else "")


def completed(
    config: SearchConfig,
    baseline: dict[str, float],
    candidate: Candidate,
    one: StageOne,
    latency: LatencyResult,
    *,
    cache: str,
    moves: int,
    dispatch_s: float | None,
    predicted_ms: float | None,
) -> Told:
    """A measured trial: its objectives, constraints, and everything its run shows."""
    quality = config.quality
    values = {quality.name: one.accuracy, "latency_ms": latency.latency_ms, "size_mb": one.size_mb}
    if not all(math.isfinite(v) for v in values.values()):
        return failed(f"non-finite result {values}")
    limits = config.constraints
    loss = _loss(config, baseline, one)
    constraints = {quality.loss_name: _excess(config, baseline, one)}
    if limits.max_latency_ms is not None:
        constraints["latency_ms"] = latency.latency_ms - limits.max_latency_ms
    attrs = {
        TrialAttr.STAGE: Status.COMPLETE,
        TrialAttr.SPEEDUP: latency.speedup,
        quality.loss_name: loss,
        TrialAttr.LATENCY: latency.summary(),
        TrialAttr.REPORT: one.report,
        TrialAttr.FEATURES: one.features,
        TrialAttr.LAYER_HOST: one.layer_host,
        TrialAttr.METRICS: one.metrics,
        TrialAttr.LATENCY_CACHE: cache,
        TrialAttr.COMPRESS_NODE_ID: one.node_id,
        TrialAttr.MEASUREMENT_MOVES: moves,
    }
    metrics = {
        **values,
        quality.loss_name: loss,
        "speedup": latency.speedup,
        "latency_ratio_ci_low": latency.ratio_ci[0],
        "latency_ratio_ci_high": latency.ratio_ci[1],
        "latency_median_ms": latency.median_ms,
        "latency_p90_ms": latency.p90_ms,
        "size_reduction": baseline["size_mb"] / one.size_mb,
        "compress_s": one.seconds,
        "latency_rounds": latency.rounds,
        "latency_ci_half_width": latency.ci_half_width,
        "latency_measure_s": latency.seconds,
        "latency_rounds_dropped": latency.rounds_dropped,
        "latency_rounds_contended": latency.rounds_contended,
        "latency_foreign_cpu": latency.foreign_cpu,
        **one.metrics,
    }
    if dispatch_s is not None:  # from dispatch to the worker starting it: Ray's queue
        metrics["dispatch_s"] = dispatch_s
    if predicted_ms is not None:
        metrics["predicted_latency_ms"] = predicted_ms
    artifacts: dict[str, Any] = {
        "candidate.json": json.loads(candidate.to_json()),
        "report.json": one.report,
    }
    if latency.samples_ms:
        artifacts["latency_samples.json"] = {
            "samples_ms": latency.samples_ms,
            "environment": latency.environment,
        }
    tags = {
        Tag.STAGE: Status.COMPLETE,
        Tag.LATENCY_CACHE: cache,
        Tag.SIGNATURE: one.signature[:16],
        Tag.NODE_ID: latency.node_id,
        Tag.COMPRESS_NODE_ID: one.node_id,
        Tag.MEASURED_UNDER_LOAD: str(latency.disturbed).lower(),
    }
    tags.update({f"{Tag.ENVIRONMENT_PREFIX}{k}": v for k, v in latency.environment.items()})
    return Told(
        Status.COMPLETE,
        values=[values[o] for o in config.objectives],
        constraints=constraints,
        attrs=attrs,
        metrics=metrics,
        feasible=config.feasible(baseline[quality.name], one.accuracy, latency.latency_ms),
        artifacts=artifacts,
        tags=tags,
    )


def stopped_early(config: SearchConfig, baseline: dict[str, float], one: StageOne) -> Told | None:
    """Staged evaluation: the trial unmeasured, if its quality already rules it out.

    Stage ``subset``: the validation subset showed a loss clearly beyond the constraint;
    stage ``accuracy``: the full validation did (for any quality objective). Neither can reach the front, so neither is
    worth a latency measurement. Told PRUNED with its constraint violation, so the samplers
    learn the region is infeasible. None: measure it.
    """
    staged = config.staged
    quality = config.quality
    loss = _loss(config, baseline, one)
    excess = _excess(config, baseline, one)
    if not staged.enabled or not (
        one.stage == "subset" or (excess > 0 and not staged.measure_infeasible)
    ):
        return None
    stage = "subset" if one.stage == "subset" else "accuracy"
    return Told(
        Status.STOPPED,
        constraints={quality.loss_name: excess},
        attrs={
            TrialAttr.STAGE: stage,
            quality.loss_name: loss,
            TrialAttr.REPORT: one.report,
        },
        metrics={
            quality.name: one.accuracy,
            quality.loss_name: loss,
            "size_mb": one.size_mb,
            "compress_s": one.seconds,
        },
        feasible=False,
        tags={Tag.STAGE: stage, Tag.COMPRESS_NODE_ID: one.node_id},
    )


def prescreened(
    config: SearchConfig, baseline: dict[str, float], one: StageOne, predicted_ms: float
) -> Told:
    """A trial whose predicted latency puts it behind the front: not measured."""
    quality = config.quality
    return Told(
        Status.PRESCREENED,
        constraints={quality.loss_name: _excess(config, baseline, one)},
        attrs={TrialAttr.STAGE: Status.PRESCREENED},
        metrics={
            quality.name: one.accuracy,
            "size_mb": one.size_mb,
            "predicted_latency_ms": predicted_ms,
            "compress_s": one.seconds,
        },
        tags={Tag.LATENCY_CACHE: "miss"},
    )
