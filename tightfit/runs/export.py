"""Export the chosen Pareto points: replay each candidate, write the engine and its manifest.

Nothing is unpickled: each point is rebuilt from its Candidate through the same
``kernels.compress`` the search used, then re-measured (accuracy and latency) so the user sees
the logged and the present numbers side by side.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from tightfit import objectives
from tightfit._ort import generation_interface
from tightfit.config import SearchConfig
from tightfit.evaluators import evaluate_accuracy, size_mb
from tightfit.exceptions import TightfitError
from tightfit.hardware_profiles import HardwareProfile, get_profile
from tightfit.keys import StudyAttr, TrialAttr
from tightfit.runs import registry
from tightfit.runs._files import sha256
from tightfit.runs.pareto import front_frame, knee
from tightfit.runs.plans import plan_tags
from tightfit.search import measure_engines, repeat_error
from tightfit.spaces import Candidate
from tightfit.studies import load_study, profile_as_searched
from tightfit.workdir import atomic_write, load_workdir_config
from tightfit.workspace import Setup, workspace

LIBRARIES = ("tightfit", "torch", "torch-pruning", "onnx", "onnxruntime", "optuna", "ray", "mlflow")


@dataclass(frozen=True)
class ExportResult:
    trial: int
    path: Path
    manifest: Path
    logged: dict[str, float]
    measured: dict[str, float]
    registered: str | None = None  # "models:/<name>@<alias>" when registered
    #: the latency ratio to the baseline (candidate / baseline) and its 95% interval, as the
    #: search logged it and as re-measured now (None where the trial kept no interval)
    ratio_logged: tuple[float, float, float] | None = None
    ratio_now: tuple[float, float, float] | None = None
    #: how far two measurements of one candidate at different times disagreed in the search
    #: (``search._reuse.repeat_error``; None where the search re-measured too few)
    repeat_error: float | None = None
    quality: str = "accuracy"  # the search's quality objective: the key in logged and measured

    @property
    def expected(self) -> tuple[float, float] | None:
        """Where a re-measurement of the logged ratio lands, 95% (``expected_range``)."""
        return expected_range(self.ratio_logged, self.ratio_now, self.repeat_error)

    @property
    def agrees(self) -> bool | None:
        """Whether the re-measured ratio lies in ``expected`` (None: no logged interval)."""
        expected = self.expected
        if expected is None or self.ratio_now is None:
            return None
        return expected[0] <= self.ratio_now[0] <= expected[1]

    @property
    def latency_change(self) -> float:
        return self.measured["latency_ms"] / self.logged["latency_ms"] - 1.0

    @property
    def quality_change(self) -> float:
        """The quality objective re-measured on the written file minus the logged value."""
        return self.measured[self.quality] - self.logged[self.quality]


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class _Built(NamedTuple):
    """An exported point before it is measured."""

    number: int
    candidate: Candidate
    target: Path
    staging: Path  # where the files are written; renamed to ``target`` with the manifest
    engine: Path
    onnx_bytes: bytes
    report: dict[str, Any]
    files: dict[str, dict[str, Any]]
    extra: dict[str, Any]


def _resolve_profile(config: SearchConfig, name: str | None) -> HardwareProfile:
    profiles = config.hardware_profiles()
    if name is None:
        return profiles[0]
    for p in profiles:
        if name in (p.name, str(p)):
            return p
    raise TightfitError(
        f"--profile '{name}' is not a profile of this search (it has: {', '.join(p.name for p in profiles)})"
    )


def _pick(study: Any, objectives: list[str], pick: str) -> list[int]:
    from optuna.trial import TrialState

    if pick in ("knee", "all"):
        front = front_frame(study)
        if front.empty:
            raise TightfitError(
                "the search has no feasible Pareto point yet; run more trials or relax the constraints"
            )
        return [knee(front, objectives)] if pick == "knee" else [int(t) for t in front["trial"]]
    numbers = pick.replace(" ", "").split(",")
    if not all(n.isdigit() for n in numbers):
        raise TightfitError(
            f"--pick must be 'knee', 'all' or trial numbers (7, or 3,7), got '{pick}'"
        )
    complete = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    missing = [n for n in numbers if int(n) not in complete]
    if missing:
        raise TightfitError(
            f"trial {', '.join(missing)} is not a complete trial of this search; "
            "see 'tightfit pareto'"
        )
    return list(dict.fromkeys(int(n) for n in numbers))


def export(
    workdir: str | os.PathLike,
    pick: str = "knee",
    out: str | os.PathLike = Path("engines"),
    profile: str | None = None,
    register: bool = False,
) -> list[ExportResult]:
    """Rebuild the picked trials of ``workdir``'s search into ``out``, each a folder with its
    engine (``model.onnx``; ``model.plan`` on TensorRT) and ``manifest.json``; re-measure them
    together on the profile's hardware, and check the accuracy of the written file.

    ``pick``: ``knee`` (the front's best balance), ``all`` (the whole front) or trial numbers
    (``"7"``, ``"3,7"``: several are re-measured together, as ``all`` is).
    ``register``: also register each as an MLflow Model (an ONNX-flavour model).

    Example:
        >>> import tightfit
        >>> [knee] = tightfit.export("runs/digits-resnet", pick="knee")  # doctest: +SKIP
        >>> knee.path, knee.measured["speedup"]  # doctest: +SKIP
    """
    workdir = Path(workdir).resolve()
    config = load_workdir_config(workdir)
    hw = _resolve_profile(config, profile)
    study = load_study(config, hw.name, workdir)
    numbers = _pick(study, list(config.objectives), pick)
    hw = profile_as_searched(hw, study)  # int8_format auto: the format the search chose
    ws = workspace(Setup.of(config, hw, workdir))
    reference = ws.reference(config.seed)
    # The search scaled every ratio by its reference latency of the baseline; the re-measured
    # ratio is scaled by the same one, so logged and re-measured latencies compare the candidate,
    # not the machine's drift since (the baseline's latency now is reported beside it).
    ref_search = float(study.user_attrs[StudyAttr.BASELINE_LATENCY_MS])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    built: list[_Built] = []
    _remove_staging(Path(out))  # an interrupted export's leftovers
    for number in numbers:
        candidate = Candidate.from_json(trials[number].user_attrs[TrialAttr.CANDIDATE])
        target = Path(out) / f"{config.name}-{hw.name}-trial{number:04d}"
        staging = target.with_name(f"{STAGING}{target.name}")
        onnx_bytes, report = ws.rebuild(candidate)
        engine = atomic_write(staging / "model.onnx", onnx_bytes)
        files = {"model.onnx": {"sha256": sha256(engine), "bytes": engine.stat().st_size}}
        extra: dict[str, Any] = {}
        if hw.runtime == "tensorrt":  # the deployable engine, bound to this GPU and TensorRT
            from tightfit.evaluators import input_feed
            from tightfit.evaluators.runtimes.tensorrt import build_engine

            feed = input_feed(reference.input_shapes, reference.input_dtypes, hw, config.seed)
            plan = atomic_write(staging / "model.plan", build_engine(engine, hw, feed))
            files["model.plan"] = {"sha256": sha256(plan), "bytes": plan.stat().st_size}
            extra["plan"] = plan_tags()
        built.append(
            _Built(number, candidate, target, staging, engine, onnx_bytes, report, files, extra)
        )
    # Several points are re-measured together, in the same rounds, so that their order is
    # not that of the machine's state while each one ran (``measure_jointly``).
    ref_ms, latencies = measure_engines(config, hw, [b.onnx_bytes for b in built], reference)
    repeat = repeat_error(study)
    results = []
    quality = config.quality.name
    for b, latency in zip(built, latencies, strict=True):
        number, engine, trial = b.number, b.engine, trials[b.number]
        accuracy = evaluate_accuracy(engine, ws.data)  # a fresh session on the written file
        logged = dict(zip(study.metric_names or config.objectives, trial.values, strict=True))
        logged["speedup"] = trial.user_attrs.get(TrialAttr.SPEEDUP, float("nan"))
        ratio_logged, ratio_now = _ratios(trial, latency)
        measured = {
            quality: accuracy,
            "latency_ms": latency.ratio * ref_search,
            "size_mb": size_mb(engine),
            "speedup": latency.speedup,
        }
        done = ExportResult(
            number,
            b.target / engine.name,
            b.target / "manifest.json",
            logged,
            measured,
            ratio_logged=ratio_logged,
            ratio_now=ratio_now,
            repeat_error=repeat,
            quality=quality,
        )
        manifest = {
            "format": "onnx",
            "runtime": hw.runtime,
            "search": config.name,
            "trial": number,
            "candidate": json.loads(b.candidate.to_json()),
            "profile": hw.model_dump(mode="json"),
            "objectives": {o: objectives.direction(o) for o in config.objectives},
            "metrics_logged": logged,
            "metrics_measured": measured,
            "baseline": {
                quality: study.user_attrs[StudyAttr.BASELINE_QUALITY],
                "latency_ms_search": ref_search,
                "latency_ms_now": ref_ms,
            },
            "latency": {
                **latency.summary(),
                "ratio_logged": ratio_logged,
                "expected_range": done.expected,
                "repeat_error_search": repeat,
                "agrees_with_logged": done.agrees,
                "measured_with_trials": [o.number for o in built if o.number != number],
                "environment": latency.environment,
            },
            "recovery": config.recovery.model_dump(mode="json"),
            **({"generation": generation_interface(engine)} if hw.generation else {}),
            "report": b.report,
            "libraries": library_versions(),
            "files": b.files,
            **b.extra,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write(b.staging / "manifest.json", json.dumps(manifest, indent=2, default=str))
        _publish(b.staging, b.target)  # the engine and its manifest appear together
        results.append(done)
    return registry.register(results, workdir, config, hw, pick) if register else results


STAGING = ".partial-"


def _publish(staging: Path, target: Path) -> None:
    """Move a complete engine folder (files + manifest) to ``target``, replacing an older one:
    a reader sees the old folder or the new one, never an engine without its manifest."""
    old = target.with_name(f"{STAGING}old-{target.name}")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _remove_staging(out: Path) -> None:
    """An interrupted export's leftovers."""
    if out.is_dir():
        for leftover in out.glob(f"{STAGING}*"):
            shutil.rmtree(leftover, ignore_errors=True)


Z95 = 1.959964


def expected_range(
    logged: tuple[float, float, float] | None,
    now: tuple[float, float, float] | None,
    repeat_error: float | None,
) -> tuple[float, float] | None:
    """The 95% range around the logged ratio in which a second measurement of it lands.

    Two measurements differ by the noise of both: in log terms their standard deviations, read
    from their own (value, low, high) intervals, add in quadrature. A bootstrap interval of a
    median is often lopsided, so each side uses the sides that meet there: below the logged
    ratio, its lower half and the re-measurement's upper half; above, the others. The logged
    interval therefore always lies within the range. Rounds alone understate the noise on a
    machine whose state moves over minutes, so where the search measured how far repeated
    measurements of its candidates disagree (``repeat_error``) and that is larger, it is used.
    None without a logged interval.
    """
    if logged is None or now is None:
        return None

    def sd(a: float, b: float) -> float:  # one side of a 95% interval, in log terms
        return math.log(b / a) / Z95

    below = math.hypot(sd(logged[1], logged[0]), sd(now[0], now[2]))
    above = math.hypot(sd(logged[0], logged[2]), sd(now[1], now[0]))
    floor = repeat_error or 0.0
    return (
        logged[0] * math.exp(-Z95 * max(below, floor)),
        logged[0] * math.exp(Z95 * max(above, floor)),
    )


def _ratios(
    trial: Any, latency: Any
) -> tuple[tuple[float, float, float] | None, tuple[float, float, float]]:
    """(logged, now): each the latency ratio to the baseline with its 95% interval."""
    now = (float(latency.ratio), float(latency.ratio_ci[0]), float(latency.ratio_ci[1]))
    kept = trial.user_attrs.get(TrialAttr.LATENCY) or {}
    if "ratio" not in kept or "ratio_ci" not in kept:
        return None, now
    low, high = kept["ratio_ci"]
    return (float(kept["ratio"]), float(low), float(high)), now


def profile_name(spec: str) -> str:
    """The profile name for a config entry (a built-in name or a profile file)."""
    return get_profile(spec).name
