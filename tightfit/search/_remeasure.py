"""The end-of-search re-measurement: the chosen candidates again, together in the same rounds.

During the search each trial is measured alone, against the baseline, as the machine was at
that moment. At the end, once no trial runs, the front (``latency.remeasure: front``) or every
measured candidate (``measured``) is rebuilt from its Candidate, as ``tightfit export`` does,
and measured together on one bench, with the standard recipe's variants in the same rounds
(``latency.recipe``; see ``search._recipe``). Kept as the study's ``remeasured_jointly``: a
resumed search with the same set does not measure it again.
"""

from __future__ import annotations

import logging
import time

import optuna
from optuna.trial import TrialState

from tightfit.config import SearchConfig
from tightfit.keys import StudyAttr, TrialAttr
from tightfit.search import _recipe
from tightfit.search._benches import BenchPool
from tightfit.search._executor import Executor
from tightfit.search._signals import DeferredInterrupt
from tightfit.spaces import Candidate
from tightfit.workspace import MeasurementReference, Workspace

log = logging.getLogger(__name__)

POLL_S = 0.5


def front_numbers(study: optuna.Study) -> list[int]:
    """The front's trials (feasible, non-dominated), fastest first (latency, or else the first
    objective, in the direction it is better)."""
    names = study.metric_names or []
    i = names.index("latency_ms") if "latency_ms" in names else 0
    sign = 1.0 if study.directions[i] == optuna.study.StudyDirection.MINIMIZE else -1.0
    best = sorted(study.best_trials, key=lambda t: (sign * t.values[i], t.number))
    return [t.number for t in best]


def chosen(study: optuna.Study, config: SearchConfig) -> list[int]:
    """The trials ``latency.remeasure`` names: the front's, then (``measured``) every other
    compressed candidate with a latency, at most ``remeasure_max``."""
    spec = config.latency
    if spec.remeasure == "off":  # the recipe is still measured beside the front
        return sorted(front_numbers(study)) if spec.recipe else []
    numbers = front_numbers(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if spec.remeasure == "measured":
        numbers += [t.number for t in complete]
    compressed = {
        t.number
        for t in complete
        if TrialAttr.LATENCY in t.user_attrs and not t.user_attrs.get(TrialAttr.IS_BASELINE)
    }
    numbers = [n for n in dict.fromkeys(numbers) if n in compressed]
    return sorted(numbers[: spec.remeasure_max])


def _rebuilt(
    numbers: list[int],
    trials: dict[int, optuna.trial.FrozenTrial],
    ws: Workspace,
    executor: Executor,
    stop: DeferredInterrupt,
) -> list[bytes]:
    """The ONNX bytes of ``numbers``' candidates, rebuilt as Ray tasks side by side (one CPU
    each, as the search's compressions ran): on SmolLM2 or a distilled CNN a rebuild takes a
    minute, so one after another in the driver was most of the re-measurement's time."""
    stop.waiting_for = "nothing more: the candidates' rebuilds are cancelled"
    refs = [
        executor.rebuild(ws.setup, Candidate.from_json(trials[n].user_attrs[TrialAttr.CANDIDATE]))
        for n in numbers
    ]
    try:
        pending = list(refs)
        while pending:
            stop.check()
            for ref in executor.wait(pending, timeout=POLL_S):
                pending.remove(ref)
        return [executor.get(ref) for ref in refs]
    except BaseException:
        for ref in refs:
            executor.cancel(ref)
        raise


def remeasure_jointly(
    study: optuna.Study,
    config: SearchConfig,
    ws: Workspace,
    pool: BenchPool,
    reference: MeasurementReference,
    baseline: dict[str, float],
    stop: DeferredInterrupt,
) -> None:
    """Measure :func:`chosen` (and the recipe) together, once no trial runs.

    Ctrl-C stops it between candidates, or after the measurement, before anything is written;
    a failure (a candidate that no longer rebuilds, a lost bench) is logged and loses only
    this step: the trials keep their own measurements.
    """
    spec, profile, executor = config.latency, pool.profile, pool.executor
    numbers = chosen(study, config)
    attrs = study.user_attrs
    done = attrs.get(StudyAttr.REMEASURED_JOINTLY, {}).get("trials") == numbers
    if done and (not spec.recipe or StudyAttr.RECIPE in attrs):
        return
    recipes = []
    if spec.recipe:
        stop.waiting_for = "the standard recipe's current variant to be built (seconds)"
        recipes = _recipe.build(ws, profile, stop.check)
    if len(numbers) + len(recipes) < 2:
        return
    if not pool.idle:
        log.warning("%s: no measurement actor left to re-measure with", profile.name)
        return
    t0 = time.monotonic()
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    log.info("%s: re-measuring %d candidates together", profile.name, len(numbers))
    try:
        onnx = _rebuilt(numbers, trials, ws, executor, stop) + [r.onnx for r in recipes]
        ref = executor.measure_many(pool.idle[0], profile, onnx, reference)
        stop.waiting_for = (
            f"nothing more: the end-of-search re-measurement of {len(numbers)} candidates "
            f"{'and the standard recipe ' if recipes else ''}is dropped (the trials keep "
            "their own measurements)"
        )
        while not executor.wait([ref], timeout=POLL_S):
            stop.check()  # Ctrl-C drops the re-measurement at once; its bench is killed
        results = executor.get(ref)
    except Exception as e:  # the search's results stand; only this extra step is lost
        log.warning(
            "%s: re-measuring together failed (%s); the trials keep their own measurements",
            profile.name,
            executor.error_text(e),
        )
        return
    stop.check()
    results, recipe_results = results[: len(numbers)], results[len(numbers) :]
    if recipes:
        study.set_user_attr(
            StudyAttr.RECIPE,
            _recipe.record(recipes, recipe_results, baseline, config),
        )
    study.set_user_attr(
        StudyAttr.REMEASURED_JOINTLY,
        {
            "trials": numbers,
            "latency_ms": {str(n): r.latency_ms for n, r in zip(numbers, results, strict=True)},
            "ratio_ci": {str(n): r.ratio_ci for n, r in zip(numbers, results, strict=True)},
            "rounds": (results or recipe_results)[0].rounds,
            "disturbed": (results or recipe_results)[0].disturbed,
            "seconds": time.monotonic() - t0,
        },
    )
