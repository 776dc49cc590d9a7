"""Latency a trial need not measure: the cache, and pre-screening by the latency predictor.

Pure bookkeeping around ``evaluators.latency_cache`` and ``evaluators.predictor``; the driver
decides what to do with a hit or a "dominated" verdict.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from tightfit.config import LatencySpec
from tightfit.evaluators import LatencyResult
from tightfit.evaluators.latency_cache import LatencyCache, architecture_signature, cache_key
from tightfit.evaluators.predictor import (
    LatencyPredictor,
    LayerRatioPredictor,
    held_out,
    spearman,
)
from tightfit.hardware_profiles import HardwareProfile
from tightfit.keys import StudyAttr, TrialAttr
from tightfit.objectives import dominates
from tightfit.workspace import StageOne


class LatencyReuse:
    """The cache of this machine, and predictors refitted on the study's measurements.

    Two predictors learn side by side: one on the per-layer table (``layer_ms``, timed on the
    target's CPU) and one on graph counts alone. A candidate whose layers were timed on the
    CPU that measures (``StageOne.layer_host`` equal to the study's environment) is predicted
    by the first; any other (a GPU profile, a compress worker on another CPU) by the second.

    They learn from compressed candidates only, not from the uncompressed baseline: it lies far
    from the candidates the predictor ranks (3-4x slower than every measured digits candidate),
    and a fit on a few points bends to reach it. Replayed over three digits searches, leaving it
    out raised the online predictions' rank correlation with the joint re-measurement from
    0.67, 0.63 and 0.90 to 0.86, 0.81 and 0.94 (over two EfficientNet-Lite0 searches, against
    their own measurements: 0.84 and 0.54 either way, within 0.03).
    """

    def __init__(
        self,
        spec: LatencySpec,
        profile: HardwareProfile,
        baseline_onnx: bytes,
        reference_ms: float,
        study: optuna.Study,
    ) -> None:
        self.spec = spec
        self.profile = profile
        self.reference_ms = reference_ms
        self.cache = LatencyCache(spec.cache_dir) if spec.cache else None
        self.baseline_signature = architecture_signature(baseline_onnx)
        self.environment: dict[str, str] = study.user_attrs.get(StudyAttr.ENVIRONMENT, {})
        env = self.environment
        self.layer_host = f"{env.get('cpu', '')}|{env.get('cpu_flags', '')}"
        self.by_layers = LayerRatioPredictor()
        self.by_graph = LatencyPredictor()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if _learned_from(t):
                self._learn(
                    t.user_attrs[TrialAttr.FEATURES],
                    t.user_attrs.get(TrialAttr.LAYER_HOST, ""),
                    t.user_attrs[TrialAttr.LATENCY]["latency_ms"],
                )

    def _layers_usable(self, features: dict[str, float], host: str) -> bool:
        return "layer_ms" in features and host == self.layer_host

    def _learn(self, features: dict[str, float], host: str, latency_ms: float) -> None:
        self.by_graph.add(features, latency_ms)
        if self._layers_usable(features, host):
            self.by_layers.add(features, latency_ms)

    def predictor_for(self, one: StageOne) -> tuple[str, LatencyPredictor | LayerRatioPredictor]:
        """Which predictor ``one`` gets: ``"layers"`` or ``"graph"``."""
        if self._layers_usable(one.features, one.layer_host):
            return "layers", self.by_layers
        return "graph", self.by_graph

    def key(self, one: StageOne) -> str:
        return cache_key(one.signature, self.baseline_signature, self.profile, self.environment)

    def cached(self, key: str) -> LatencyResult | None:
        return self.cache.get(key, self.reference_ms) if self.cache is not None else None

    def predict(self, one: StageOne) -> float | None:
        """The predicted latency, as soon as the predictor can make one (3 measurements): it is
        logged beside every measurement that follows, for the rank correlation."""
        return self.predictor_for(one)[1].predict(one.features)

    def worth_measuring(
        self, one: StageOne, predicted_ms: float, front: list[dict], quality: str
    ) -> bool:
        """False if even an optimistic latency leaves ``one`` dominated by a measured point
        (only once the predictor has learned from ``prescreen_after`` measurements); points
        are dicts of objective values, the quality objective named ``quality``."""
        if not self.spec.prescreen or len(self.predictor_for(one)[1]) < self.spec.prescreen_after:
            return True
        mine = {
            quality: one.accuracy,
            "latency_ms": predicted_ms * (1.0 - self.spec.prescreen_margin),
            "size_mb": one.size_mb,
        }
        return not any(dominates(theirs, mine) for theirs in front)

    def store(self, key: str, latency: LatencyResult) -> None:
        """Keep a measurement for later searches on this machine (when the cache is on)."""
        if self.cache is not None:
            self.cache.put(key, latency)

    def record(
        self,
        key: str,
        one: StageOne,
        latency: LatencyResult,
        measured: bool,
        baseline: bool = False,
    ) -> None:
        """Keep a new measurement (``measured``), and learn from it unless it is the baseline's."""
        if measured:
            self.store(key, latency)
        if not baseline:
            self._learn(one.features, one.layer_host, latency.latency_ms)


def latency_reuse_metrics(study: optuna.Study) -> dict[str, float]:
    """Cache hits, trials not measured (pre-screened, or stopped by staged evaluation at the
    accuracy subset or the full accuracy), time saved, and the predictor's rank correlation.

    ``predictor_spearman`` is over trials whose latency was predicted *before* it was measured
    (not refitted afterwards), so it is what the pre-screening decisions actually relied on.
    ``predictor_spearman_loo``: every measured compressed candidate (cache hits too: the
    predictor learns from them) predicted by the graph fit on all the others
    (``predictor.held_out``): the predictor's ranking once it has the search's data, rather
    than the few measurements an early prediction had.
    """
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    measured = [
        t for t in done if t.state == TrialState.COMPLETE and TrialAttr.LATENCY in t.user_attrs
    ]
    fresh = [t for t in measured if t.user_attrs.get(TrialAttr.LATENCY_CACHE) == "miss"]
    seconds = [t.user_attrs[TrialAttr.LATENCY].get("seconds", 0.0) for t in fresh]
    mean_s = sum(seconds) / len(seconds) if seconds else 0.0
    predicted = [t for t in fresh if TrialAttr.PREDICTED_LATENCY_MS in t.user_attrs]
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    n_pre = sum(
        1 for t in pruned if t.user_attrs.get(TrialAttr.STAGE, "prescreened") == "prescreened"
    )
    n_hits = sum(1 for t in measured if t.user_attrs.get(TrialAttr.LATENCY_CACHE) == "hit")
    out = {
        "n_latency_measured": float(len(fresh)),
        "n_latency_cache_hits": float(n_hits),
        "n_prescreened": float(n_pre),
        "n_stopped_subset": float(
            sum(1 for t in pruned if t.user_attrs.get(TrialAttr.STAGE) == "subset")
        ),
        "n_stopped_accuracy": float(
            sum(1 for t in pruned if t.user_attrs.get(TrialAttr.STAGE) == "accuracy")
        ),
        # an earlier trial's candidate again: neither built nor measured (not in n_trials)
        "n_repeats": float(sum(1 for t in pruned if t.user_attrs.get(TrialAttr.STAGE) == "repeat")),
        "latency_measure_s_mean": mean_s,
        "latency_s_saved": (len(pruned) + n_hits) * mean_s,
        "n_predicted": float(len(predicted)),
    }
    rho = spearman(
        [t.user_attrs[TrialAttr.PREDICTED_LATENCY_MS] for t in predicted],
        [t.user_attrs[TrialAttr.LATENCY]["latency_ms"] for t in predicted],
    )
    if rho == rho:
        out["predictor_spearman"] = rho
    loo = _held_out(measured)
    rho = spearman(
        [p for _, p in loo], [t.user_attrs[TrialAttr.LATENCY]["latency_ms"] for t, _ in loo]
    )
    if rho == rho:
        out["predictor_spearman_loo"] = rho
        out["n_predicted_loo"] = float(len(loo))
    return out


def _learned_from(trial: FrozenTrial) -> bool:
    """Whether the latency predictors learn from ``trial``: a measured compressed candidate
    (features and a latency), not the uncompressed baseline (``LatencyReuse`` says why)."""
    attrs = trial.user_attrs
    return (
        TrialAttr.FEATURES in attrs
        and TrialAttr.LATENCY in attrs
        and not attrs.get(TrialAttr.IS_BASELINE)
    )


def _held_out(trials: list[FrozenTrial]) -> list[tuple[FrozenTrial, float]]:
    """``predictor.held_out`` over the measured compressed candidates among ``trials``: each
    one that could be predicted, with its prediction."""
    usable = [t for t in trials if _learned_from(t)]
    predictions = held_out(
        [t.user_attrs[TrialAttr.FEATURES] for t in usable],
        [t.user_attrs[TrialAttr.LATENCY]["latency_ms"] for t in usable],
    )
    return [(t, p) for t, p in zip(usable, predictions, strict=True) if p is not None]


#: fewer pairs of measurements than this give no repeat error (its estimate would be noise)
MIN_REPEAT_PAIRS = 5


def repeat_error(study: optuna.Study) -> float | None:
    """How far two measurements of the same candidate, taken at different times in this search,
    typically disagree: a robust standard deviation (1.4826 x the median absolute value) of
    log(joint re-measurement / the search's measurement) over the re-measured candidates.

    A measurement's own interval holds only the noise of its rounds. On a shared or virtual
    machine the ratio of two models also moves over minutes (a neighbour's memory traffic slows
    int8 and fp32 unequally, and no CPU counter shows it): six measurements of one digits
    candidate within a minute spread 3-8%, beyond each one's +-2% interval. This is that
    movement, as this search saw it. None when fewer than ``MIN_REPEAT_PAIRS`` were re-measured.
    """
    joint = study.user_attrs.get(StudyAttr.REMEASURED_JOINTLY)
    if not joint:
        return None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    logs = [
        math.log(
            joint["latency_ms"][str(n)] / trials[n].user_attrs[TrialAttr.LATENCY]["latency_ms"]
        )
        for n in joint["trials"]
        if n in trials and "latency" in trials[n].user_attrs
    ]
    if len(logs) < MIN_REPEAT_PAIRS:
        return None
    return 1.4826 * float(np.median(np.abs(logs)))


def joint_metrics(study: optuna.Study) -> dict[str, float]:
    """What the end-of-search joint re-measurement (``latency.remeasure``) found.

    ``joint_vs_search_spearman``: how the candidates' order measured together agrees with their
    order measured one at a time during the search. ``predictor_spearman_joint``: the latency
    predictor's online predictions against the joint measurement (the trials that had one);
    ``predictor_spearman_loo_joint``: its leave-one-out predictions (``predictor.held_out``,
    fitted on the search's measurements of the others) against it.
    """
    joint = study.user_attrs.get(StudyAttr.REMEASURED_JOINTLY)
    if not joint:
        return {}
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    numbers = [n for n in joint["trials"] if n in trials]
    again = [joint["latency_ms"][str(n)] for n in numbers]
    out = {
        "n_remeasured_jointly": float(len(numbers)),
        "remeasure_s": float(joint["seconds"]),
        "joint_vs_search_spearman": spearman(
            [trials[n].user_attrs[TrialAttr.LATENCY]["latency_ms"] for n in numbers], again
        ),
    }
    predicted = [n for n in numbers if "predicted_latency_ms" in trials[n].user_attrs]
    out["n_predicted_joint"] = float(len(predicted))
    out["predictor_spearman_joint"] = spearman(
        [trials[n].user_attrs[TrialAttr.PREDICTED_LATENCY_MS] for n in predicted],
        [joint["latency_ms"][str(n)] for n in predicted],
    )
    error = repeat_error(study)
    if error is not None:
        out["repeat_error"] = error
    loo = _held_out([trials[n] for n in numbers])
    out["predictor_spearman_loo_joint"] = spearman(
        [p for _, p in loo], [joint["latency_ms"][str(t.number)] for t, _ in loo]
    )
    return {k: v for k, v in out.items() if v == v}  # NaN: too few pairs
