"""Checks and measurements before the first trial, each run once per study.

Each is a function that returns what it found (the driver keeps it in the study, so a resumed
search does not run it again) or raises :class:`ConfigError` where the search cannot succeed:
- the baseline: its reference latency, quality and size;
- BatchNorm recalibration alone must not break the accuracy constraint;
- the A/A check: the baseline measured against itself (this machine's error right now);
- ``int8_format: auto``: uniform int8 built static and dynamic, the faster chosen;
- ``max_latency_ms``: the most compressed candidate must be able to meet it.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from tightfit.config import SearchConfig
from tightfit.evaluators import evaluate_quality, size_mb
from tightfit.exceptions import ConfigError
from tightfit.kernels.recovery import recalibrate_batchnorm
from tightfit.keys import StudyAttr
from tightfit.search._benches import BenchPool
from tightfit.search._reuse import LatencyReuse
from tightfit.spaces import CompressionSpace
from tightfit.workspace import MeasurementReference, Setup, Workspace

log = logging.getLogger(__name__)


def baseline(pool: BenchPool, ws: Workspace, reference: MeasurementReference) -> dict[str, Any]:
    """The baseline's study attributes: its reference latency (the quietest of a few
    measurements), quality, extra metrics, size and the environment it was measured in."""
    latency = pool.call("measure_reference", reference)
    accuracy, extras = evaluate_quality(ws.baseline_onnx, ws.data)
    return {
        StudyAttr.BASE_MODEL: ws.model_id,
        StudyAttr.BASELINE_QUALITY: accuracy,
        StudyAttr.BASELINE_METRICS: extras,
        StudyAttr.BASELINE_SIZE_MB: size_mb(ws.baseline_onnx),
        StudyAttr.BASELINE_LATENCY_MS: latency.baseline_median_ms,
        StudyAttr.ENVIRONMENT: latency.environment,
        StudyAttr.EXPORT: ws.export_record,
    }


def check_batchnorm_recovery(
    config: SearchConfig, ws: Workspace, space: CompressionSpace, baseline_accuracy: float
) -> None:
    """Refuse ``recovery.batchnorm`` where it alone breaks the accuracy constraint.

    Recalibration replaces the trained BatchNorm statistics with the calibration data's;
    when that data does not look like the training data (EfficientNet-Lite0 on photo crops:
    100% -> 60% top-1 agreement, uncompressed) every pruned or factorized candidate would
    fail, and the search would learn nothing. Checked once, before the baseline is saved,
    on the uncompressed model: one recalibration, export and evaluation.
    """
    if not config.recovery.batchnorm or not any(u.knob != "bits" for u in space.units):
        return
    ctx = ws.ctx
    model = copy.deepcopy(ws.model).eval()
    if not recalibrate_batchnorm(model, ctx.calibration_tensors()):
        return
    path = ctx.export(model, ws.scratch / "bn.onnx")
    accuracy, _ = evaluate_quality(path, ws.data)
    quality = config.quality
    if config.loss_excess(baseline_accuracy, accuracy) > 0:
        raise ConfigError(
            "recovery.batchnorm: re-estimating BatchNorm statistics on the calibration data "
            f"alone takes the uncompressed model's {quality.name} from {baseline_accuracy:.4f} "
            f"to {accuracy:.4f} ({quality.constraint} is "
            f"{config.constraints.limit(quality)}), so every pruned candidate "
            "would fail: the calibration inputs do not look like the training data. Set "
            "recovery.batchnorm: false (recovery.reconstruct: {enabled: true} repairs "
            "pruned layers without it), or calibrate on data like the training set"
        )
    log.info("BatchNorm recalibration keeps the baseline's %s: %.4f", quality.name, accuracy)


def aa_check(pool: BenchPool, reference: MeasurementReference) -> dict[str, Any]:
    """The baseline measured against itself, under the search's protocol.

    Its ratio should read 1.0: how far it is off is this machine's measurement error right
    now (the speedups of the search carry it). Logged on the summary run; a front whose
    A/A error exceeds the profile's ``aa_tolerance`` is flagged.
    """
    profile = pool.profile
    tolerance = profile.measurement.aa_tolerance
    result = pool.call("measure", reference.baseline_onnx, reference)
    error = abs(result.ratio - 1.0)
    check = {
        "ratio": result.ratio,
        "ratio_ci": list(result.ratio_ci),
        "error": error,
        "tolerance": tolerance,
        "exceeded": error > tolerance,
        "rounds": result.rounds,
        "rounds_dropped": result.rounds_dropped,
        "rounds_contended": result.rounds_contended,
        "disturbed": result.disturbed,
    }
    log_at = log.warning if check["exceeded"] else log.info
    log_at(
        "%s: A/A check, the baseline against itself: ratio %.3f [%.3f, %.3f] (error %.1f%%, "
        "tolerance %.1f%%)",
        profile.name,
        result.ratio,
        *result.ratio_ci,
        100 * error,
        100 * tolerance,
    )
    return check


def int8_formats(
    pool: BenchPool,
    setup: Setup,
    space: CompressionSpace,
    reuse: LatencyReuse,
    reference: MeasurementReference,
) -> tuple[str, dict[str, Any]]:
    """``int8_format: auto``: uniform int8 built static and dynamic, both measured; the choice
    (dynamic only when faster by more than the protocol's ``target_ci``) and what each measured.
    Anything that fails leaves static, the default, and says why."""
    executor, profile = pool.executor, pool.profile
    quality = setup.config.quality.name
    candidate = space.uniform(bits=8)
    if candidate.is_baseline:
        log.info("int8_format auto: no layer of the space takes int8; static")
        return "static", {}
    measured: dict[str, Any] = {}
    try:
        refs = {  # both builds at once, on two workers
            fmt: executor.compress(
                setup.model_copy(update={"profile": profile.with_int8_format(fmt)}), candidate
            )
            for fmt in ("static", "dynamic")
        }
        built = {fmt: executor.get(ref) for fmt, ref in refs.items()}
        if built["static"].onnx == built["dynamic"].onnx:
            log.info("int8_format auto: no int8 layer is a MatMul; static")
            return "static", {}
        for fmt, one in built.items():  # from the latency cache, as a trial would
            key = reuse.key(one)
            latency = reuse.cached(key)
            if latency is None:
                latency = pool.call("measure", one.onnx, reference)
                reuse.store(key, latency)
            measured[fmt] = {"latency_ms": latency.latency_ms, quality: one.accuracy}
    except Exception as e:
        reason = executor.error_text(e)
        log.warning(
            "int8_format auto: could not build and measure both formats (%s); static", reason
        )
        return "static", {"error": reason}
    margin = 1.0 - profile.measurement.target_ci
    faster = measured["dynamic"]["latency_ms"] < margin * measured["static"]["latency_ms"]
    choice = "dynamic" if faster else "static"
    log.info(
        "int8_format auto on %s: uniform int8 measures %s; trials use %s",
        profile.name,
        ", ".join(f"{f} {m['latency_ms']:.3f} ms" for f, m in measured.items()),
        choice,
    )
    return choice, measured


def fastest_latency(
    pool: BenchPool,
    setup: Setup,
    space: CompressionSpace,
    reference: MeasurementReference,
    limit: float,
) -> float | None:
    """The most compressed candidate's latency (every unit at its strongest level), which
    bounds what the search can reach; ConfigError if it misses ``max_latency_ms`` = ``limit``.
    None where it could not be built or measured (the search goes on)."""
    executor, profile = pool.executor, pool.profile
    strongest = space.uniform(prune_ratio=0.99, rank_fraction=0.0, bits=8)
    try:
        one = executor.get(executor.compress(setup, strongest))
        latency = pool.call("measure", one.onnx, reference)
    except Exception as e:
        log.warning("could not measure the most compressed candidate: %s", executor.error_text(e))
        return None
    if latency.latency_ms > limit:
        raise ConfigError(
            f"constraints.max_latency_ms = {limit:g} ms cannot be met on {profile.name}: the "
            f"most compressed candidate of this space measures {latency.latency_ms:.3f} ms "
            f"(baseline {reference.reference_ms:.3f} ms); raise the limit or widen the space"
        )
    return float(latency.latency_ms)
