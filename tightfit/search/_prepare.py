"""A profile's search before its first trial: model, space, study, benches and checks.

Everything here runs once per study; a resumed search finds its results in the study and goes
straight on. See ``_preflight`` for the checks and ``_seeding`` for the scan and the seeds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from tightfit.config import SearchConfig
from tightfit.exceptions import WorkdirError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels import discover
from tightfit.keys import StudyAttr
from tightfit.search import _preflight, _seeding
from tightfit.search._benches import BenchPool
from tightfit.search._executor import Executor, Recorder
from tightfit.search._reuse import LatencyReuse
from tightfit.search._signals import DeferredInterrupt
from tightfit.spaces import CompressionSpace
from tightfit.studies import open_study, profile_as_searched, recover_interrupted
from tightfit.workdir import atomic_write
from tightfit.workspace import MeasurementReference, Setup, Workspace, workspace

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """What a profile's trials run with."""

    profile: HardwareProfile  # with int8_format auto resolved
    setup: Setup
    study: optuna.Study
    space: CompressionSpace
    baseline: dict[
        str, float
    ]  # the quality objective (accuracy or perplexity), latency_ms, size_mb
    reference: MeasurementReference  # what every measurement is taken against
    reuse: LatencyReuse
    pool: BenchPool
    summary_dir: Path
    ws: Workspace | None = None  # None in the scheduler's unit tests
    n_refused: int = 0


def prepare(
    config: SearchConfig,
    profile: HardwareProfile,
    workdir: Path,
    recorder: Recorder,
    executor: Executor,
) -> Prepared:
    """Load the model, discover the space, open (or resume) the study, start the benches, run
    the pre-flight checks the study has not run yet, and enqueue the seeds of a new study.

    On any error the benches are stopped before it propagates.
    """
    summary_dir = workdir / "summary" / profile.name
    summary_dir.mkdir(parents=True, exist_ok=True)
    setup = Setup.of(config, profile, workdir)
    ws = workspace(setup)  # loads (or trains) the model, exports the baseline
    space, n_refused = _space(config, ws, profile, summary_dir)
    study = open_study(config, profile.name)
    base_model = study.user_attrs.get(StudyAttr.BASE_MODEL, ws.model_id)
    if base_model != ws.model_id:
        raise WorkdirError(
            f"the model callable now returns other weights ({ws.model_id}) than when search "
            f"'{config.name}' started ({base_model}); use a new search name or workdir"
        )
    pool = BenchPool(profile, executor)
    s = _Steps(config, setup, ws, study, pool, recorder, summary_dir)
    try:
        pool.start(config.concurrency_of(profile.name))
        return s.run(space, n_refused)
    except BaseException:
        pool.stop()
        raise


def _space(
    config: SearchConfig, ws: Workspace, profile: HardwareProfile, summary_dir: Path
) -> tuple[CompressionSpace, int]:
    units, refused = discover(ws.model, ws.ctx, config.space)
    space = CompressionSpace(units, ws.model_id, config.seed)
    atomic_write(summary_dir / "space.json", json.dumps(space.describe(), indent=1))
    atomic_write(summary_dir / "refused.json", json.dumps([r.to_dict() for r in refused], indent=1))
    if refused:
        log.warning(
            "%s: %d part(s) of the model are not searched (reasons in %s), e.g. %s: %s",
            profile.name,
            len(refused),
            summary_dir / "refused.json",
            refused[0].path or "<model>",
            refused[0].reason,
        )
    return space, len(refused)


@dataclass
class _Steps:
    """The steps after the benches are up, each skipped where the study has its result."""

    config: SearchConfig
    setup: Setup  # its profile: with int8_format auto resolved, once it is
    ws: Workspace
    study: optuna.Study
    pool: BenchPool
    recorder: Recorder
    summary_dir: Path

    @property
    def profile(self) -> HardwareProfile:
        return self.setup.profile

    def run(self, space: CompressionSpace, n_refused: int) -> Prepared:
        config, study, pool = self.config, self.study, self.pool
        reference = self.ws.reference(config.seed)
        if StudyAttr.BASELINE_LATENCY_MS not in study.user_attrs:
            pool.executor.warm_up(config.concurrency)
            found = _preflight.baseline(pool, self.ws, reference)
            accuracy = found[StudyAttr.BASELINE_QUALITY]
            _preflight.check_batchnorm_recovery(config, self.ws, space, accuracy)
            _set(study, found)
        attrs = study.user_attrs
        baseline = {
            config.quality.name: attrs[StudyAttr.BASELINE_QUALITY],
            "latency_ms": attrs[StudyAttr.BASELINE_LATENCY_MS],
            "size_mb": attrs[StudyAttr.BASELINE_SIZE_MB],
        }
        reference = reference.model_copy(update={"reference_ms": baseline["latency_ms"]})
        reuse = LatencyReuse(
            config.latency, self.profile, reference.baseline_onnx, baseline["latency_ms"], study
        )
        if StudyAttr.AA_CHECK not in attrs:
            study.set_user_attr(StudyAttr.AA_CHECK, _preflight.aa_check(pool, reference))
        q = self.profile.quantization
        if q.int8_format == "auto" or q.activation_type == "auto":
            self._int8_format(space, reuse, reference, baseline[config.quality.name])
        limit = config.constraints.max_latency_ms
        if limit is not None and StudyAttr.FASTEST_LATENCY_MS not in attrs:
            fastest = _preflight.fastest_latency(pool, self.setup, space, reference, limit)
            if fastest is not None:
                study.set_user_attr(StudyAttr.FASTEST_LATENCY_MS, fastest)
        with DeferredInterrupt():  # journal and MLflow writes: not cut half-way by Ctrl-C
            self._reconcile()
        table = None
        if config.sensitivity.enabled:  # long: Ctrl-C stops it (it is saved once done)
            space, table = self._sensitivity(space)
        with DeferredInterrupt():
            if not study.trials:
                _seeding.enqueue(study, space, _seeding.plan(config, space, self.ws, table))
        return Prepared(
            self.profile,
            self.setup,
            study,
            space,
            baseline,
            reference,
            reuse,
            pool,
            self.summary_dir,
            self.ws,
            n_refused,
        )

    def _int8_format(
        self,
        space: CompressionSpace,
        reuse: LatencyReuse,
        reference: MeasurementReference,
        baseline_quality: float,
    ) -> None:
        """``int8_format: auto`` / ``activation_type: auto``: measured once per study (a study
        begun without it stays on the defaults: static, QUInt8); every step after this one
        builds with the choice."""
        study = self.study
        if StudyAttr.INT8_FORMAT not in study.user_attrs and study.trials:
            log.info("int8 settings auto: study %s began without it; static", study.study_name)
            study.set_user_attr(StudyAttr.INT8_FORMAT, "static")
        elif StudyAttr.INT8_FORMAT not in study.user_attrs:
            (fmt, activations), measured = _preflight.int8_formats(
                self.pool, self.setup, space, reuse, reference, baseline_quality
            )
            _set(
                study,
                {
                    StudyAttr.INT8_FORMAT: fmt,
                    StudyAttr.INT8_ACTIVATION: activations,
                    StudyAttr.INT8_FORMATS_MEASURED: measured,
                },
            )
        profile = profile_as_searched(self.profile, study)
        self.setup = self.setup.model_copy(update={"profile": profile})
        reuse.profile = self.pool.profile = profile

    def _reconcile(self) -> None:
        """After a crash: trials left running are failed and enqueued again, and every
        finished trial gets exactly one finished record."""
        name, study, recorder = self.profile.name, self.study, self.recorder
        for number in recover_interrupted(study):
            recorder.mark_interrupted(name, number, "driver stopped; trial enqueued again")
        trials = study.get_trials(deepcopy=False)
        fixed = recorder.reconcile(name, trials, list(self.config.objectives))
        if fixed:
            log.info("%d MLflow runs written from the study (the driver had stopped)", fixed)
            recorder.set_pareto(name, {t.number for t in study.best_trials})

    def _sensitivity(self, space: CompressionSpace) -> tuple[CompressionSpace, pd.DataFrame | None]:
        """The scan (run, or loaded from the study), the space it shrinks, logged."""
        ws, study = self.ws, self.study
        table = _seeding.scan(study, self.pool.executor, self.setup, space, ws)
        if table is None:
            return space, None
        n = len(ws.subset) if ws.subset is not None else len(ws.data.targets)
        title = f"{self.config.name} on {self.profile.name}: each unit alone"
        space, metrics, files = _seeding.shrink(
            self.config, space, table, n, self.summary_dir, title
        )
        metrics["sensitivity_s"] = float(study.user_attrs.get(StudyAttr.SENSITIVITY_S, 0.0))
        self.recorder.log_progress(self.profile.name, metrics, step=0)
        self.recorder.log_files(self.profile.name, files)
        return space, table


def _set(study: optuna.Study, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        study.set_user_attr(key, value)
