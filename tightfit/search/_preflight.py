"""Checks and measurements before the first trial, each run once per study.

Each is a function that returns what it found (the driver keeps it in the study, so a resumed
search does not run it again) or raises :class:`ConfigError` where the search cannot succeed:
- the baseline: its reference latency, quality and size;
- BatchNorm recalibration alone must not break the accuracy constraint;
- the A/A check: the baseline measured against itself (this machine's error right now);
- ``int8_format: auto`` / ``activation_type: auto``: uniform int8 built each way (static
  U8S8, static S8S8, dynamic), the fastest within the quality constraint chosen;
- ``max_latency_ms``: the most compressed candidate must be able to meet it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from tightfit.config import SearchConfig
from tightfit.evaluators import evaluate_quality, size_mb
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile
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


#: a variant of ``int8_formats``: (int8_format, activation type)
Int8Variant = tuple[str, str]


def int8_variants(profile: HardwareProfile) -> dict[str, Int8Variant]:
    """What ``int8_formats`` builds and measures for ``profile``, by name, the default first:
    the profile's format (``static`` under ``int8_format: auto``) with its activation type
    (QUInt8 under ``activation_type: auto``); the same with QInt8 activations (``_s8s8``)
    where ``activation_type`` is auto; ``dynamic`` where ``int8_format`` is auto."""
    q = profile.quantization
    fmt = "static" if q.int8_format == "auto" else q.int8_format
    variants: dict[str, Int8Variant] = {fmt: (fmt, q.activations)}
    if q.activation_type == "auto":
        variants[f"{fmt}_s8s8"] = (fmt, "QInt8")
    if q.int8_format == "auto":
        variants["dynamic"] = ("dynamic", q.activations)
    return variants


def choose_int8(
    measured: dict[str, dict[str, Any]],
    default: str,
    feasible: Callable[[dict[str, Any]], bool],
    margin: float,
) -> str:
    """The variant to keep: among those whose uniform int8 meets the quality constraint (all, if
    none does), the fastest; ``default`` unless that is faster by more than ``margin`` (a share
    of the default's latency), so noise does not flip the choice."""
    eligible = [name for name, m in measured.items() if feasible(m)] or list(measured)
    fastest = min(eligible, key=lambda name: measured[name]["latency_ms"])
    if default in eligible and (
        measured[fastest]["latency_ms"] >= (1.0 - margin) * measured[default]["latency_ms"]
    ):
        return default
    return fastest


def int8_formats(
    pool: BenchPool,
    setup: Setup,
    space: CompressionSpace,
    reuse: LatencyReuse,
    reference: MeasurementReference,
    baseline_quality: float,
) -> tuple[Int8Variant, dict[str, Any]]:
    """``int8_format: auto`` and ``activation_type: auto``: uniform int8 built in each variant
    (``int8_variants``) and measured on the profile; the choice (``choose_int8``: the fastest
    within the quality constraint, by more than the protocol's ``target_ci``) and what each
    variant measured. A variant that fails to build or measure is left out, with its reason;
    if the default fails, it stays, and says why."""
    executor, profile, config = pool.executor, pool.profile, setup.config
    quality = config.quality.name
    variants = int8_variants(profile)
    first = next(iter(variants))
    default = variants[first]
    candidate = space.uniform(bits=8)
    if candidate.is_baseline:
        log.info("int8 settings auto: no layer of the space takes int8; %s", first)
        return default, {}
    refs = {  # every build at once, on the workers
        name: executor.compress(
            setup.model_copy(update={"profile": profile.with_int8_format(*variant)}), candidate
        )
        for name, variant in variants.items()
    }
    measured: dict[str, Any] = {}
    built: dict[str, Any] = {}
    for name, ref in refs.items():
        try:
            one = executor.get(ref)
        except Exception as e:
            measured[name] = {"error": executor.error_text(e)}
            log.warning(
                "int8 settings auto: %s could not be built (%s)", name, measured[name]["error"]
            )
            continue
        same = next((other for other, b in built.items() if b.onnx == one.onnx), None)
        if same is None:
            built[name] = one
        else:  # e.g. no int8 layer is a MatMul: dynamic builds as static
            log.info("int8 settings auto: %s builds the same graph as %s", name, same)
    if len(built) < 2 and not measured:  # one graph: nothing to choose
        return default, {}
    for name, one in built.items():
        try:
            key = reuse.key(one)  # from the latency cache, as a trial would
            latency = reuse.cached(key)
            if latency is None:
                latency = pool.call("measure", one.onnx, reference)
                reuse.store(key, latency)
            measured[name] = {"latency_ms": latency.latency_ms, quality: one.accuracy}
        except Exception as e:
            measured[name] = {"error": executor.error_text(e)}
            log.warning(
                "int8 settings auto: %s could not be measured (%s)", name, measured[name]["error"]
            )
    ok = {name: m for name, m in measured.items() if "error" not in m}
    if first not in ok:
        log.warning("int8 settings auto: the default (%s) failed; trials use it anyway", first)
        return default, measured
    choice = choose_int8(
        ok,
        first,
        lambda m: config.loss_excess(baseline_quality, m[quality]) <= 0,
        profile.measurement.target_ci,
    )
    log.info(
        "int8 settings auto on %s: uniform int8 measures %s; trials use %s",
        profile.name,
        ", ".join(
            f"{n} {m['latency_ms']:.3f} ms ({quality} {m[quality]:.4f})" for n, m in ok.items()
        ),
        choice,
    )
    return variants[choice], measured


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
