"""The search driver: one process, the only writer of the Optuna study and of MLflow.

Per hardware profile: export and score the baseline, discover the space, open (or resume) the
study, enqueue the baseline and uniform-compression seeds. Then one loop (``_drive``) runs every
profile's trials at once, ``concurrency`` in flight over the search and at most
``profile_concurrency`` per profile. Compression runs as Ray tasks on any node; measurements run
in one ``LatencyBench`` actor per measuring device (``_ray``). On one machine a measurement holds the
cores it measures on: while one is queued or running, no compression task is dispatched. On
nodes set aside for measurement (a profile with Ray resources or labels), compression goes on.

A node that dies takes its work with it: Ray reruns its compression tasks elsewhere, and the
driver moves its measurement to another actor and starts a replacement actor. Every trial is
told once.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from tightfit.config import SearchConfig, drop_excess
from tightfit.evaluators import evaluate_quality, size_mb
from tightfit.exceptions import ConfigError, SearchAborted, WorkdirError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels.export import export_onnx
from tightfit.kernels.recovery import recalibrate_batchnorm
from tightfit.runs import pareto
from tightfit.runs._tracker import Tracker
from tightfit.search import _ray, _recipe, sensitivity, strategies
from tightfit.search._reuse import LatencyReuse, joint_metrics, latency_reuse_metrics
from tightfit.search._signals import DeferredInterrupt
from tightfit.spaces import Candidate, CompressionSpace, discover
from tightfit.studies import ATTR_INTERRUPTED, counted_trials, open_study, recover_interrupted
from tightfit.workdir import atomic_write, prepare_workdir, workdir_lock
from tightfit.workspace import Setup, StageOne, workspace

log = logging.getLogger(__name__)

POLL_S = 0.5
FAIL_FAST = 5  # this many trials failing in a row for the same reason, none done yet: stop
MAX_MEASURE_ATTEMPTS = 3  # a measurement whose node died is moved, at most this many times
BENCH_START_S = 300.0  # the first measurement actor must be up by then


def _error_kind(reason: str) -> str:
    """A failure reason without its numbers and hashes: two trials failing for the same cause
    (``base model 3f2a... now returns 9b1c...``) have the same kind."""
    return re.sub(r"[0-9a-f]{8,}|\d+(\.\d+)?", "#", reason.splitlines()[0] if reason else "")


@dataclass
class ProfileOutcome:
    profile: str
    study: optuna.Study
    front: pd.DataFrame
    baseline: dict[str, float]
    summary_dir: Path
    n_complete: int
    n_failed: int
    aa_check: dict[str, Any] | None = None  # the baseline measured against itself


@dataclass
class SearchOutcome:
    config: SearchConfig
    workdir: Path
    ui_url: str
    profiles: list[ProfileOutcome] = field(default_factory=list)


@dataclass
class _Pending:
    trial: optuna.Trial
    candidate: Candidate
    run_id: str
    submitted: float = field(default_factory=time.monotonic)
    dispatched_at: float = field(default_factory=time.time)  # unix time, vs the worker's clock
    stage_one: StageOne | None = None
    told: bool = False  # Optuna has its result
    cache_key: str = ""
    cache: str = ""  # "hit" or "miss" once looked up
    predicted_ms: float | None = None
    moves: int = 0  # times its measurement moved because the measuring node died
    owed_write: Callable[[], None] | None = None  # the MLflow write still owed, if any


ProgressHook = Callable[[str, int, int, int, float | None], None]


def run_search(config: SearchConfig, progress: ProgressHook | None = None) -> SearchOutcome:
    """Run (or resume) the whole search; return the front of every profile."""
    workdir = prepare_workdir(config)
    with workdir_lock(workdir):  # one search at a time in a work directory
        return _run_search(config, workdir, progress)


def _run_search(
    config: SearchConfig, workdir: Path, progress: ProgressHook | None
) -> SearchOutcome:
    tracker = Tracker(
        workdir, config.name, uri=config.mlflow.tracking_uri, objectives=list(config.objectives)
    )
    outcome = SearchOutcome(config=config, workdir=workdir, ui_url=tracker.ui_url())
    profiles = config.hardware_profiles()
    for profile in profiles:  # model, data and export errors before Ray starts
        workspace(Setup(config=config, profile=profile, cache_dir=str(workdir / "cache")))
    started = _ray.start_ray(config)
    searches: list[_ProfileSearch] = []
    try:
        for profile in profiles:  # every profile can be measured, before the first trial
            _ray.check_feasible(profile)
        for profile in profiles:
            searches.append(_ProfileSearch(config, profile, workdir, tracker, progress))
            searches[-1].prepare()
        clock = _Clock()
        with DeferredInterrupt("the trials' current steps (a few seconds)") as stop:
            _drive(searches, config.concurrency, stop, clock)
            for s in searches:
                s.remeasure_jointly(stop)
        clock.end = time.monotonic()
        for s in searches:
            outcome.profiles.append(s.summarise(clock))
    finally:
        for s in searches:
            s.stop_benches()
        if started:
            import ray

            ray.shutdown()
    return outcome


@dataclass
class _Clock:
    """The driver loop's wall time, and how much of it went to waiting on Ray."""

    start: float = field(default_factory=time.monotonic)
    wait_s: float = 0.0
    end: float | None = None

    @property
    def wall_s(self) -> float:
        return (self.end or time.monotonic()) - self.start


def _drive(
    searches: list[_ProfileSearch], concurrency: int, stop: DeferredInterrupt, clock: _Clock
) -> None:
    """Every profile's trials at once: at most ``concurrency`` in flight over all profiles.

    Measurements of profiles without nodes of their own (``HardwareProfile.dedicated``) run on
    this machine's cores: one at a time, only when no compression runs, and no compression is
    dispatched while one is queued or running. Profiles take turns asking for new trials.
    """
    import ray

    turn = 0  # which profile asks first, in rotation
    try:
        while True:
            stop.check()  # Ctrl-C takes effect here, between complete steps
            active = [s for s in searches if not s.finished]
            if not active:
                return
            compressing = any(s.compressing for s in searches)
            local_busy = any(s.shared_cores and s.measuring for s in searches)
            for s in active:
                if not s.shared_cores:
                    s.start_measurements()
                elif not compressing and not local_busy and s.waiting:
                    s.start_measurements(limit=1)
                    local_busy = True
            if not any(s.shared_cores and (s.measuring or s.waiting) for s in searches):
                in_flight = sum(s.in_flight for s in searches)
                asked = True
                while asked and in_flight < concurrency:
                    asked = False
                    for s in active[turn % len(active) :] + active[: turn % len(active)]:
                        if in_flight < concurrency and s.wants_trial:
                            s.ask_and_dispatch()
                            in_flight += 1
                            asked = True
                            turn += 1
            owner = {ref: s for s in searches for ref in s.refs()}
            t_wait = time.monotonic()
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=POLL_S) if owner else ([], [])
            clock.wait_s += time.monotonic() - t_wait
            for ref in ready:
                owner[ref].handle(ref)
            for s in searches:
                s.expire()
    except BaseException:
        for s in searches:
            s.interrupt()
        raise


class _ProfileSearch:
    def __init__(
        self,
        config: SearchConfig,
        profile: HardwareProfile,
        workdir: Path,
        tracker: Tracker,
        progress: ProgressHook | None,
    ) -> None:
        self.config = config
        self.profile = profile
        self.workdir = workdir
        self.tracker = tracker
        self.progress = progress or (lambda *a: None)
        self.n_done = 0
        self.n_failed = 0
        self.n_refused = 0  # parts of the model discovery refused (summary/<profile>/refused.json)
        self.failures: list[str] = []  # this run's failure reasons since its last good trial
        self.succeeded = False  # a trial of this run was evaluated (not failed)
        self.n_trials = config.n_trials
        self.scan: pd.DataFrame | None = None  # the sensitivity scan, if enabled
        self.best_speedup: float | None = None
        self._current: _Pending | None = None
        self.concurrency = config.concurrency_of(profile.name)
        self.benches: list[Any] = []  # every measurement actor alive
        self.idle: list[Any] = []  # those ready and not measuring
        self.starting: dict[Any, Any] = {}  # readiness probe -> actor, until it answers
        self.compressing: dict[Any, _Pending] = {}  # ref -> trial
        self.waiting: deque[_Pending] = deque()  # compressed, waiting for a measurement actor
        self.measuring: dict[Any, tuple[Any, _Pending]] = {}  # ref -> (actor, trial)
        self.shared_cores = not profile.dedicated  # measures where compression runs
        self.setup = Setup(config=config, profile=profile, cache_dir=str(workdir / "cache"))
        self.summary_dir = workdir / "summary" / profile.name
        self.summary_dir.mkdir(parents=True, exist_ok=True)

    # ---- set-up -------------------------------------------------------------------------
    def _prepare(self) -> None:
        ws = workspace(self.setup)  # loads (or trains) the model, exports the baseline
        self.ws = ws
        units, refused = discover(ws.model, ws.ctx, self.config.space)
        self.n_refused = len(refused)
        self.space = CompressionSpace(units, ws.model_id, self.config.seed)
        atomic_write(self.summary_dir / "space.json", json.dumps(self.space.describe(), indent=1))
        atomic_write(
            self.summary_dir / "refused.json", json.dumps([r.to_dict() for r in refused], indent=1)
        )
        if refused:
            log.warning(
                "%s: %d part(s) of the model are not searched (reasons in %s), e.g. %s: %s",
                self.profile.name,
                len(refused),
                self.summary_dir / "refused.json",
                refused[0].path or "<model>",
                refused[0].reason,
            )
        self.study = open_study(self.config, self.profile.name)
        attrs = self.study.user_attrs
        if attrs.get("base_model", ws.model_id) != ws.model_id:
            raise WorkdirError(
                f"the model callable now returns other weights ({ws.model_id}) than when search "
                f"'{self.config.name}' started ({attrs['base_model']}); use a new search name or workdir"
            )
        self.compress_remote = _ray.compress_function()
        self._start_benches()
        self.baseline_bytes = ws.baseline_onnx.read_bytes()
        self.shapes, self.dtypes = ws.input_spec()
        if "baseline_latency_ms" not in attrs:
            self._measure_baseline()
        self.baseline = {
            "accuracy": self.study.user_attrs["baseline_accuracy"],
            "latency_ms": self.study.user_attrs["baseline_latency_ms"],
            "size_mb": self.study.user_attrs["baseline_size_mb"],
        }
        self.reuse = LatencyReuse(
            self.config.latency,
            self.profile,
            self.baseline_bytes,
            self.baseline["latency_ms"],
            self.study,
        )
        if "aa_check" not in self.study.user_attrs:
            self._aa_check()
        if self.profile.quantization.int8_format == "auto":
            self._resolve_int8_format()
        if self.config.constraints.max_latency_ms is not None and "fastest_latency_ms" not in attrs:
            self._check_latency_constraint()
        with DeferredInterrupt():  # journal and MLflow writes: not cut half-way by Ctrl-C
            for number in recover_interrupted(self.study):
                self.tracker.mark_interrupted(
                    self.profile.name, number, "driver stopped; trial enqueued again"
                )
            fixed = self.tracker.reconcile(
                self.profile.name,
                self.study.get_trials(deepcopy=False),
                list(self.config.objectives),
            )
            if fixed:
                log.info("%d MLflow runs written from the study (the driver had stopped)", fixed)
                self.tracker.set_pareto(
                    self.profile.name, {t.number for t in self.study.best_trials}
                )
        if self.config.sensitivity.enabled:  # long: Ctrl-C stops it (it is saved once done)
            self._sensitivity()
        with DeferredInterrupt():
            if not self.study.trials:
                self._enqueue_seeds()

    # ---- measurement actors -----------------------------------------------------------
    def _start_benches(self) -> None:
        """One actor per device the profile may use at once; wait for the first to answer.

        On one machine (no resource or label) that is one actor; on a cluster, as many as there
        are devices (slots), at most the profile's concurrency.
        """
        import ray

        slots = _ray.measurement_slots(self.profile)
        n = min(slots, self.concurrency) if self.profile.dedicated else 1
        for _ in range(max(n, 1)):
            self._add_bench()
        deadline = time.monotonic() + BENCH_START_S
        while not self.idle:
            ready, _ = ray.wait(list(self.starting), num_returns=1, timeout=5.0)
            for ref in ready:
                self._bench_started(ref, strict=True)
            if not self.idle and time.monotonic() > deadline:
                raise ConfigError(
                    f"hardware profile '{self.profile.name}': no measurement actor could start "
                    f"within {BENCH_START_S:g} s; its devices may be held by another search "
                    "(see `ray status`)"
                )

    def _add_bench(self) -> None:
        bench = _ray.latency_bench(self.profile)
        self.benches.append(bench)
        self.starting[bench.runtime_missing.remote(self.profile)] = bench

    def _bench_started(self, ref: Any, strict: bool = False) -> None:
        """A new actor answered its readiness probe: put it to work, or drop it."""
        import ray

        bench = self.starting.pop(ref)
        try:
            missing = ray.get(ref)
        except Exception as e:
            missing = _ray.error_text(e)
        if not missing:
            self.idle.append(bench)
            return
        self._drop_bench(bench)
        if strict:
            raise ConfigError(f"hardware profile '{self.profile.name}' cannot measure: {missing}")
        log.warning("a measurement actor of %s could not start: %s", self.profile.name, missing)

    def _drop_bench(self, bench: Any) -> None:
        import ray

        if bench in self.benches:
            self.benches.remove(bench)
        if bench in self.idle:
            self.idle.remove(bench)
        try:
            ray.kill(bench, no_restart=True)
        except Exception:  # already dead with its node
            pass

    def _replace_bench(self, bench: Any) -> None:
        """Kill ``bench`` (dead or stuck) and start another; Ray places it once a device is free."""
        self._drop_bench(bench)
        self._add_bench()

    def stop_benches(self) -> None:
        """Free the devices (the next profile, or another search, may need them)."""
        for bench in list(self.benches):
            self._drop_bench(bench)
        self.starting.clear()

    def _measure_baseline(self) -> None:
        import ray

        _ray.warm_up(self.config.concurrency)
        latency = ray.get(
            self.idle[0].reference.remote(
                self.profile, self.baseline_bytes, self.shapes, self.dtypes, self.config.seed
            )
        )
        study = self.study
        accuracy, extras = evaluate_quality(self.ws.baseline_onnx, self.ws.data)
        self._check_batchnorm_recovery(accuracy)
        study.set_user_attr("base_model", self.ws.model_id)
        study.set_user_attr("baseline_accuracy", accuracy)
        study.set_user_attr("baseline_metrics", extras)
        study.set_user_attr("baseline_size_mb", size_mb(self.ws.baseline_onnx))
        study.set_user_attr("baseline_latency_ms", latency.baseline_median_ms)
        study.set_user_attr("environment", latency.environment)

    def _aa_check(self) -> None:
        """The baseline measured against itself, once per study, under the search's protocol.

        Its ratio should read 1.0: how far it is off is this machine's measurement error right
        now (the speedups of the search carry it). Logged on the summary run; a front whose
        A/A error exceeds the profile's ``aa_tolerance`` is flagged.
        """
        import ray

        tolerance = self.profile.measurement.aa_tolerance
        result = ray.get(
            self.idle[0].measure.remote(
                self.profile, self.baseline_bytes, *self._against_baseline()
            )
        )
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
        self.study.set_user_attr("aa_check", check)
        log_at = log.warning if check["exceeded"] else log.info
        log_at(
            "%s: A/A check, the baseline against itself: ratio %.3f [%.3f, %.3f] (error %.1f%%, "
            "tolerance %.1f%%)",
            self.profile.name,
            result.ratio,
            *result.ratio_ci,
            100 * error,
            100 * tolerance,
        )

    def _check_batchnorm_recovery(self, baseline_accuracy: float) -> None:
        """Refuse ``recovery.batchnorm`` where it alone breaks the accuracy constraint.

        Recalibration replaces the trained BatchNorm statistics with the calibration data's;
        when that data does not look like the training data (EfficientNet-Lite0 on photo crops:
        100% -> 60% top-1 agreement, uncompressed) every pruned or factorized candidate would
        fail, and the search would learn nothing. Checked once, before the baseline is saved,
        on the uncompressed model: one recalibration, export and evaluation.
        """
        recovery = self.config.recovery
        if not recovery.batchnorm or not any(u.knob != "bits" for u in self.space.units):
            return
        ctx = self.ws.ctx
        model = copy.deepcopy(self.ws.model).eval()
        if not recalibrate_batchnorm(model, ctx.calibration_tensors()):
            return
        path = export_onnx(model, ctx.example_inputs, ctx.input_names, self.ws.scratch / "bn.onnx")
        accuracy, _ = evaluate_quality(path, self.ws.data)
        limit = self.config.constraints.max_accuracy_drop
        if drop_excess(baseline_accuracy, accuracy, limit) > 0:
            raise ConfigError(
                "recovery.batchnorm: re-estimating BatchNorm statistics on the calibration data "
                f"alone takes the uncompressed model's accuracy from {baseline_accuracy:.4f} to "
                f"{accuracy:.4f} (max_accuracy_drop is {limit}), so every pruned candidate "
                "would fail: the calibration inputs do not look like the training data. Set "
                "recovery.batchnorm: false (recovery.reconstruct: {enabled: true} repairs "
                "pruned layers without it), or calibrate on data like the training set"
            )
        log.info("BatchNorm recalibration keeps the baseline's accuracy: %.4f", accuracy)

    def _resolve_int8_format(self) -> None:
        """``int8_format: auto``: uniform int8 is built static and dynamic and both are measured
        here, once per study (the study keeps the choice, so a resumed search stays on it);
        every trial then uses the faster (dynamic only when it is faster by more than the
        measurement protocol's ``target_ci``)."""
        attrs = self.study.user_attrs
        if "int8_format" not in attrs and self.study.trials:  # begun as static, stays static
            log.info("int8_format auto: study %s began without it; static", self.study.study_name)
            self.study.set_user_attr("int8_format", "static")
        elif "int8_format" not in attrs:
            choice, measured = self._measure_int8_formats()
            self.study.set_user_attr("int8_format", choice)
            self.study.set_user_attr("int8_formats_measured", measured)
        choice = self.study.user_attrs["int8_format"]
        self.profile = self.profile.with_int8_format(choice)
        self.setup = self.setup.model_copy(update={"profile": self.profile})
        self.reuse.profile = self.profile

    def _measure_int8_formats(self) -> tuple[str, dict[str, Any]]:
        import ray

        candidate = self.space.uniform(bits=8)
        if candidate.is_baseline:
            log.info("int8_format auto: no layer of the space takes int8; static")
            return "static", {}
        measured: dict[str, Any] = {}
        try:
            refs = {  # both builds at once, on two workers
                fmt: self.compress_remote.remote(
                    self.setup.model_copy(update={"profile": self.profile.with_int8_format(fmt)}),
                    candidate,
                )
                for fmt in ("static", "dynamic")
            }
            built = {fmt: ray.get(ref) for fmt, ref in refs.items()}
            if built["static"].onnx == built["dynamic"].onnx:
                log.info("int8_format auto: no int8 layer is a MatMul; static")
                return "static", {}
            for fmt, one in built.items():  # from the latency cache, as a trial would
                key = self.reuse.key(one)
                latency = self.reuse.cached(key)
                if latency is None:
                    latency = ray.get(self._measure_task(one.onnx, self.idle[0]))
                    self.reuse.store(key, latency)
                measured[fmt] = {"latency_ms": latency.latency_ms, "accuracy": one.accuracy}
        except Exception as e:
            log.warning(
                "int8_format auto: could not build and measure both formats (%s); static",
                _ray.error_text(e),
            )
            return "static", {"error": _ray.error_text(e)}
        # dynamic only when faster beyond the protocol's noise target: static is the default
        margin = 1.0 - self.profile.measurement.target_ci
        faster = measured["dynamic"]["latency_ms"] < margin * measured["static"]["latency_ms"]
        choice = "dynamic" if faster else "static"
        log.info(
            "int8_format auto on %s: uniform int8 measures %s; trials use %s",
            self.profile.name,
            ", ".join(f"{f} {m['latency_ms']:.3f} ms" for f, m in measured.items()),
            choice,
        )
        return choice, measured

    def _check_latency_constraint(self) -> None:
        """Stop early when no candidate of the space can meet ``max_latency_ms``.

        The most compressed candidate (every unit at its strongest level) bounds what the search
        can reach; it is measured once, before the first trial.
        """
        import ray

        strongest = self.space.uniform(prune_ratio=0.99, rank_fraction=0.0, bits=8)
        try:
            one = ray.get(self.compress_remote.remote(self.setup, strongest))
            latency = ray.get(self._measure_task(one.onnx, self.idle[0]))
        except Exception as e:
            log.warning("could not measure the most compressed candidate: %s", _ray.error_text(e))
            return
        limit = self.config.constraints.max_latency_ms
        assert limit is not None
        if latency.latency_ms > limit:
            raise ConfigError(
                f"constraints.max_latency_ms = {limit:g} ms cannot be met on {self.profile.name}: the "
                f"most compressed candidate of this space measures {latency.latency_ms:.3f} ms "
                f"(baseline {self.baseline['latency_ms']:.3f} ms); raise the limit or widen the space"
            )
        self.study.set_user_attr("fastest_latency_ms", latency.latency_ms)

    def _sensitivity(self) -> None:
        """Scan each (unit, level) alone on the validation subset (or load the scan a previous
        run of this search saved), then shrink the space and keep the scan for the seeds."""
        import ray

        attrs = self.study.user_attrs
        if "sensitivity" in attrs:
            scan = pd.DataFrame(attrs["sensitivity"])
        elif self.study.trials:  # a study begun without a scan: its space stays as it was
            log.info("sensitivity scan skipped: study %s began without one", self.study.study_name)
            return
        else:
            t0 = time.monotonic()
            probes = sensitivity.probes(self.space)
            refs = [
                self.compress_remote.remote(self.setup, p.candidate(self.space), True)
                for p in probes
            ]
            rows = []
            for probe, ref in zip(probes, refs, strict=True):
                try:
                    one = ray.get(ref)
                    rows.append((probe, one.accuracy, one.size_mb))
                except Exception as e:  # a level that cannot be applied alone: dropped below
                    log.warning(
                        "sensitivity %s=%s failed: %s",
                        probe.unit.param_name,
                        probe.value,
                        _ray.error_text(e),
                    )
                    rows.append((probe, float("nan"), float("nan")))
            scan = sensitivity.table(rows, self.ws.baseline_subset_accuracy)
            self.study.set_user_attr("sensitivity", scan.to_dict("records"))
            self.study.set_user_attr("sensitivity_s", time.monotonic() - t0)
        self.scan = scan
        n = len(self.ws.subset) if self.ws.subset is not None else len(self.ws.data.targets)
        metrics = {"sensitivity_s": float(self.study.user_attrs.get("sensitivity_s", 0.0))}
        if self.config.sensitivity.shrink:
            self.space, dropped = sensitivity.shrink(
                self.space,
                scan,
                self.config.constraints.max_accuracy_drop,
                n,
                self.config.staged.z,
            )
            metrics["n_levels_dropped"] = float(sum(len(v) for v in dropped.values()))
            atomic_write(
                self.summary_dir / "space.json", json.dumps(self.space.describe(), indent=1)
            )
            atomic_write(self.summary_dir / "dropped_levels.json", json.dumps(dropped, indent=1))
        files = [
            atomic_write(self.summary_dir / "sensitivity.csv", scan.to_csv(index=False)),
            sensitivity.figure_png(
                scan,
                self.summary_dir / "sensitivity.png",
                f"{self.config.name} on {self.profile.name}: each unit alone",
            ),
        ]
        self.tracker.log_progress(self.profile.name, metrics, step=0)
        self.tracker.log_files(self.profile.name, files)

    def _plan(self) -> list[tuple[str, Candidate]]:
        """What the study starts with: the baseline, then either the strategy's whole sweep (a
        baseline strategy) or a few seeds of each baseline (``seeds``), as (kind, candidate)."""
        s = self.space
        plan = [("baseline", s.baseline())]
        strategy = self.config.strategy
        if strategy == "uniform":
            return plan + [(strategy, c) for c in strategies.uniform_sweep(s, self.config.seed)]
        if strategy == "global_magnitude":
            importance = strategies.channel_importance(self.ws.model, self.ws.ctx)
            sweep = strategies.global_magnitude_sweep(s, importance, seed=self.config.seed)
            return plan + [(strategy, c) for c in sweep]
        uniform = [
            s.uniform(bits=8),
            s.uniform(prune_ratio=0.25, bits=8),
            s.uniform(rank_fraction=0.5, bits=8),
            s.uniform(prune_ratio=0.375, rank_fraction=0.75, bits=8),
            s.uniform(prune_ratio=0.25),
            s.uniform(rank_fraction=0.5),
        ]
        seeds = self.config.seeds
        plan += [("uniform", c) for c in uniform[: seeds.uniform]]
        k = self.config.sensitivity.seeds
        if self.scan is not None and k:
            limit = self.config.constraints.max_accuracy_drop
            plan += [("sensitivity", c) for c in sensitivity.seeds(s, self.scan, limit, k)]
        if seeds.global_magnitude:
            importance = strategies.channel_importance(self.ws.model, self.ws.ctx)
            sweep = strategies.global_magnitude_sweep(s, importance)
            # with int8 where the space has it: the allocation practitioners deploy
            quantized = [c for c in sweep if c.bits] or sweep
            chosen = strategies.spread(quantized, seeds.global_magnitude)
            plan += [("global_magnitude", c) for c in chosen]
        unique: list[tuple[str, Candidate]] = []
        for kind, c in plan:
            if all(c != other for _, other in unique):
                unique.append((kind, c))
        return unique

    def _enqueue_seeds(self) -> None:
        plan = self._plan()
        self.study.set_user_attr("n_planned", len(plan))
        for kind, c in plan:
            self.study.enqueue_trial(self.space.params_of(c), user_attrs={"seed_kind": kind})

    # ---- dispatch -----------------------------------------------------------------------
    def _measure_task(self, onnx_bytes: bytes, bench: Any) -> Any:
        """Latency of ``onnx_bytes`` against the baseline, scaled by the reference latency."""
        return bench.measure.remote(self.profile, onnx_bytes, *self._against_baseline())

    def _against_baseline(self) -> tuple[Any, ...]:
        """What every measurement of this search is taken against, after the candidates:
        ``LatencyBench.measure`` and ``measure_many``'s remaining arguments."""
        ref_ms = self.baseline["latency_ms"]
        return (self.baseline_bytes, self.shapes, self.dtypes, ref_ms, self.config.seed)

    def _ask(self) -> _Pending:
        trial = self.study.ask()
        candidate = self.space.suggest(trial)
        trial.set_user_attr("candidate", candidate.to_json())
        trial.set_user_attr("is_baseline", candidate.is_baseline)
        trial.set_user_attr("summary", _knobs_text(candidate))
        params = {
            **self.space.values_of(candidate),
            **{f"summary.{k}": v for k, v in candidate.summary().items()},
        }
        run_id = self.tracker.start_trial(self.profile.name, trial.number, params)
        return _Pending(trial, candidate, run_id)

    # ---- results ------------------------------------------------------------------------
    def _record(self, p: _Pending, write: Callable[[], None]) -> None:
        """Write a told trial to MLflow; if interrupted, ``interrupt`` finishes the write."""
        p.told = True
        p.owed_write = write
        write()
        p.owed_write = None

    def _fail(self, p: _Pending, reason: str) -> None:
        p.trial.set_user_attr("error", reason)
        self.study.tell(p.trial, state=TrialState.FAIL)
        self._record(
            p, lambda: self.tracker.finish_trial(p.run_id, {}, status="failed", error=reason)
        )
        self.n_failed += 1
        self.n_done += 1
        self._told()
        log.info("trial %d failed: %s", p.trial.number, reason)
        self._fail_fast(reason)

    def _fail_fast(self, reason: str) -> None:
        """A circuit breaker: stop the search when its first ``FAIL_FAST`` trials (of this run)
        all fail for the same reason (numbers and hashes aside): a broken model callable,
        data or runtime would otherwise burn the whole budget on one error."""
        self.failures.append(reason)
        if self.succeeded or len(self.failures) < FAIL_FAST:
            return
        recent = {_error_kind(r) for r in self.failures[-FAIL_FAST:]}
        if len(recent) == 1:
            raise SearchAborted(
                f"profile '{self.profile.name}': the first {len(self.failures)} trials all "
                f"failed with the same error, so the search stopped: {reason} -- fix that and "
                "rerun the same command (the failed trials stay in the study)"
            )

    def _complete(self, p: _Pending, latency: Any) -> None:
        one = p.stage_one
        assert one is not None
        values = {
            "accuracy": one.accuracy,
            "latency_ms": latency.latency_ms,
            "size_mb": one.size_mb,
        }
        if not all(math.isfinite(v) for v in values.values()):
            return self._fail(p, f"non-finite result {values}")
        drop = self.baseline["accuracy"] - one.accuracy
        t = p.trial
        excess = self._drop_excess(one.accuracy)
        t.set_constraint("accuracy_drop", excess)
        if self.config.constraints.max_latency_ms is not None:
            t.set_constraint(
                "latency_ms", latency.latency_ms - self.config.constraints.max_latency_ms
            )
        feasible = self.config.constraints.met(
            self.baseline["accuracy"], one.accuracy, latency.latency_ms
        )
        t.set_user_attr("stage", "complete")
        t.set_user_attr("speedup", latency.speedup)
        t.set_user_attr("accuracy_drop", drop)
        t.set_user_attr("latency", latency.summary())
        t.set_user_attr("report", one.report)
        t.set_user_attr("features", one.features)
        t.set_user_attr("layer_host", one.layer_host)
        t.set_user_attr("metrics", one.metrics)
        t.set_user_attr("latency_cache", p.cache)
        t.set_user_attr("compress_node_id", one.node_id)
        t.set_user_attr("measurement_moves", p.moves)
        self.study.tell(t, [values[o] for o in self.config.objectives])
        self.reuse.record(
            p.cache_key,
            one,
            latency,
            measured=p.cache == "miss",
            baseline=p.candidate.is_baseline,
        )
        metrics = {
            **values,
            "accuracy_drop": drop,
            "speedup": latency.speedup,
            "latency_ratio_ci_low": latency.ratio_ci[0],
            "latency_ratio_ci_high": latency.ratio_ci[1],
            "latency_median_ms": latency.median_ms,
            "latency_p90_ms": latency.p90_ms,
            "size_reduction": self.baseline["size_mb"] / one.size_mb,
            "compress_s": one.seconds,
            "latency_rounds": latency.rounds,
            "latency_ci_half_width": latency.ci_half_width,
            "latency_measure_s": latency.seconds,
            "latency_rounds_dropped": latency.rounds_dropped,
            "latency_rounds_contended": latency.rounds_contended,
            "latency_foreign_cpu": latency.foreign_cpu,
            **one.metrics,
        }
        if one.started_at:  # from dispatch to the worker starting it: Ray's queue and scheduling
            metrics["dispatch_s"] = max(0.0, one.started_at - p.dispatched_at)
        if p.predicted_ms is not None:
            metrics["predicted_latency_ms"] = p.predicted_ms
        artifacts: dict[str, Any] = {
            "candidate.json": json.loads(p.candidate.to_json()),
            "report.json": one.report,
        }
        if latency.samples_ms:
            artifacts["latency_samples.json"] = {
                "samples_ms": latency.samples_ms,
                "environment": latency.environment,
            }
        tags = {
            "tightfit.stage": "complete",
            "tightfit.latency_cache": p.cache,
            "tightfit.signature": one.signature[:16],
            "tightfit.node_id": latency.node_id,
            "tightfit.compress_node_id": one.node_id,
            "tightfit.measured_under_load": str(latency.disturbed).lower(),
        }
        tags.update({f"env.{k}": v for k, v in latency.environment.items()})
        self._record(
            p,
            lambda: self.tracker.finish_trial(
                p.run_id,
                metrics,
                status="complete",
                feasible=feasible,
                artifacts=artifacts,
                tags=tags,
            ),
        )
        self.n_done += 1
        if feasible:
            self.best_speedup = max(self.best_speedup or 0.0, latency.speedup)
        self.tracker.set_pareto(self.profile.name, {b.number for b in self.study.best_trials})
        self.succeeded = True
        self._told()

    def _drop_excess(self, accuracy: float) -> float:
        limit = self.config.constraints.max_accuracy_drop
        return drop_excess(self.baseline["accuracy"], accuracy, limit)

    def _stopped_early(self, p: _Pending) -> bool:
        """Staged evaluation: finish ``p`` unmeasured if its accuracy already rules it out.

        Stage ``subset``: the validation subset showed a drop clearly beyond the constraint;
        stage ``accuracy``: the full validation did. Neither can reach the front, so neither
        is worth a latency measurement. The trial is told PRUNED with its constraint violation,
        so the samplers learn the region is infeasible.
        """
        one = p.stage_one
        assert one is not None
        staged = self.config.staged
        drop = self.baseline["accuracy"] - one.accuracy
        excess = self._drop_excess(one.accuracy)
        if not staged.enabled or not (
            one.stage == "subset" or (excess > 0 and not staged.measure_infeasible)
        ):
            return False
        stage = "subset" if one.stage == "subset" else "accuracy"
        t = p.trial
        t.set_constraint("accuracy_drop", excess)
        t.set_user_attr("stage", stage)
        t.set_user_attr("accuracy_drop", drop)
        t.set_user_attr("report", one.report)
        self.study.tell(t, state=TrialState.PRUNED)
        metrics = {
            "accuracy": one.accuracy,
            "accuracy_drop": drop,
            "size_mb": one.size_mb,
            "compress_s": one.seconds,
        }
        self._record(
            p,
            lambda: self.tracker.finish_trial(
                p.run_id,
                metrics,
                status="stopped",
                feasible=False,
                tags={"tightfit.stage": stage, "tightfit.compress_node_id": one.node_id},
            ),
        )
        self.n_done += 1
        self.succeeded = True
        self._told()
        log.info("trial %d stopped at stage %s: accuracy drop %.4f", t.number, stage, drop)
        return True

    def _reuse_or_skip(self, p: _Pending) -> bool:
        """Finish ``p`` without measuring it, if its latency is cached or predicted dominated."""
        one = p.stage_one
        assert one is not None
        p.cache_key = self.reuse.key(one)
        cached = self.reuse.cached(p.cache_key)
        if cached is not None:
            p.cache = "hit"
            self._complete(p, cached)
            return True
        p.cache = "miss"
        p.predicted_ms = self.reuse.predict(one)
        if p.predicted_ms is None:
            return False
        p.trial.set_user_attr("predicted_latency_ms", p.predicted_ms)
        p.trial.set_user_attr("predictor", self.reuse.predictor_for(one)[0])
        objectives = list(self.config.objectives)
        front = [dict(zip(objectives, t.values, strict=True)) for t in self.study.best_trials]
        if self.reuse.worth_measuring(one, p.predicted_ms, front):
            return False
        self._prescreen(p)
        return True

    def _prescreen(self, p: _Pending) -> None:
        one = p.stage_one
        assert one is not None and p.predicted_ms is not None
        p.trial.set_user_attr("stage", "prescreened")
        p.trial.set_constraint("accuracy_drop", self._drop_excess(one.accuracy))
        self.study.tell(p.trial, state=TrialState.PRUNED)
        metrics = {
            "accuracy": one.accuracy,
            "size_mb": one.size_mb,
            "predicted_latency_ms": p.predicted_ms,
            "compress_s": one.seconds,
        }
        self._record(
            p,
            lambda: self.tracker.finish_trial(
                p.run_id, metrics, status="prescreened", tags={"tightfit.latency_cache": "miss"}
            ),
        )
        self.n_done += 1
        self.succeeded = True
        self._told()
        log.info(
            "trial %d pre-screened: predicted %.3f ms, dominated", p.trial.number, p.predicted_ms
        )

    # ---- the loop -----------------------------------------------------------------------
    def prepare(self) -> None:
        try:
            self._prepare()
        except BaseException:
            self.stop_benches()
            raise
        self.n_done, self.n_failed = counted_trials(self.study)
        self.n_trials = self.config.n_trials
        if self.config.strategy != "search":  # a baseline alone: its sweep, at most n_trials
            self.n_trials = min(self.n_trials, int(self.study.user_attrs["n_planned"]))
        self.best_speedup = _best_feasible_speedup(self.study)
        self._report()

    def _told(self) -> None:
        """After each told trial: the front's hypervolume so far, charted over trials in MLflow."""
        objectives: list[str] = list(self.config.objectives)
        points = [dict(zip(objectives, t.values, strict=True)) for t in self.study.best_trials]
        hv = pareto.hypervolume_of(points, self.baseline, objectives)
        metrics = {"hypervolume": hv}
        if self.best_speedup is not None:
            metrics["best_feasible_speedup"] = self.best_speedup
        self.tracker.log_progress(self.profile.name, metrics, step=self.n_done)

    def _report(self) -> None:
        self.progress(
            self.profile.name, self.n_done, self.n_trials, self.n_failed, self.best_speedup
        )

    @property
    def in_flight(self) -> int:
        return len(self.compressing) + len(self.waiting) + len(self.measuring)

    @property
    def finished(self) -> bool:
        return self.n_done >= self.n_trials and self.in_flight == 0

    @property
    def wants_trial(self) -> bool:
        """Below this profile's concurrency, with trials still to ask for."""
        n = self.in_flight
        return n < self.concurrency and self.n_done + n < self.n_trials

    def ask_and_dispatch(self) -> None:
        p = self._ask()
        self.compressing[self.compress_remote.remote(self.setup, p.candidate)] = p

    def start_measurements(self, limit: int | None = None) -> None:
        """Send waiting trials to idle measurement actors (at most ``limit``)."""
        started = 0
        while self.waiting and self.idle and (limit is None or started < limit):
            p = self.waiting.popleft()
            assert p.stage_one is not None
            p.submitted = time.monotonic()
            bench = self.idle.pop(0)  # the longest idle: devices take turns
            self.measuring[self._measure_task(p.stage_one.onnx, bench)] = (bench, p)
            started += 1

    def refs(self) -> list[Any]:
        return [*self.compressing, *self.measuring, *self.starting]

    def handle(self, ref: Any) -> None:
        """One of this profile's Ray results is ready."""
        import ray

        if ref in self.starting:
            self._bench_started(ref)
            return
        if ref in self.measuring:
            bench, p = self.measuring.pop(ref)
            self._current = p
            self._measured(ref, bench, p)
        else:
            p = self.compressing.pop(ref)
            self._current = p
            try:
                p.stage_one = ray.get(ref)
            except Exception as e:
                self._fail(p, _ray.error_text(e))
            else:
                if not self._stopped_early(p) and not self._reuse_or_skip(p):
                    self.waiting.append(p)
        self._current = None
        self._report()

    def _measured(self, ref: Any, bench: Any, p: _Pending) -> None:
        """A measurement came back: complete the trial, or move it if its node died."""
        import ray

        try:
            latency = ray.get(ref)
        except Exception as e:
            if not _ray.is_system_failure(e):
                self.idle.append(bench)
                return self._fail(p, f"latency: {_ray.error_text(e)}")
            self._replace_bench(bench)
            p.moves += 1
            if p.moves >= MAX_MEASURE_ATTEMPTS:
                return self._fail(
                    p, f"latency: the measuring node died {p.moves} times ({_ray.error_text(e)})"
                )
            log.warning(
                "trial %d: its measuring node died (%s); measuring it on another",
                p.trial.number,
                _ray.error_text(e),
            )
            self.waiting.appendleft(p)
            return None
        self.idle.append(bench)
        self._complete(p, latency)  # an error here is in recording, not the candidate's
        return None

    def expire(self) -> None:
        """Fail the trials whose stage ran past ``trial_timeout_s``, and cancel their work."""
        import ray

        limit = self.config.trial_timeout_s
        now = time.monotonic()
        for ref, p in list(self.compressing.items()):
            if now - p.submitted > limit:
                ray.cancel(ref, force=True)
                del self.compressing[ref]
                self._fail(p, f"timed out after {limit:g} s (compression and accuracy)")
        for ref, (bench, p) in list(self.measuring.items()):
            if now - p.submitted > limit:
                del self.measuring[ref]
                self._replace_bench(bench)  # an actor call cannot be force-cancelled
                self._fail(p, f"timed out after {limit:g} s (latency measurement)")

    def interrupt(self) -> None:
        """Ctrl-C or a crash: mark in-flight trials interrupted and enqueue them again."""
        import ray

        compressing = self.compressing
        pending = [*compressing.values(), *self.waiting, *(p for _, p in self.measuring.values())]
        current = self._current  # the trial whose result was being recorded, if any
        if current is not None and current not in pending:
            if not current.told:
                pending.append(current)
            elif current.owed_write is not None:
                current.owed_write()  # Optuna has it: finish its MLflow run, don't re-run it
        for ref in compressing:
            ray.cancel(ref, force=True)
        for p in pending:
            p.trial.set_user_attr(ATTR_INTERRUPTED, True)
            self.study.tell(p.trial, state=TrialState.FAIL)
            self.study.enqueue_trial(p.trial.params, user_attrs={"retry_of": p.trial.number})
            self.tracker.mark_interrupted(
                self.profile.name, p.trial.number, "interrupted; enqueued again"
            )
        for number in recover_interrupted(self.study):  # e.g. one asked but not yet dispatched
            self.tracker.mark_interrupted(self.profile.name, number, "interrupted; enqueued again")
        self.tracker.stop_summary(self.profile.name)

    # ---- the end ------------------------------------------------------------------------
    def _front_numbers(self) -> list[int]:
        front = pareto.front_frame(self.study)
        return sorted(int(n) for n in front["trial"]) if not front.empty else []

    def _remeasure_set(self) -> list[int]:
        """The trials ``latency.remeasure`` names: the front's, then (``measured``) every other
        compressed candidate with a latency, at most ``remeasure_max``."""
        spec = self.config.latency
        front = pareto.front_frame(self.study)
        chosen = [int(n) for n in front["trial"]] if not front.empty else []
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if spec.remeasure == "measured":
            chosen += [t.number for t in complete]
        compressed = {
            t.number
            for t in complete
            if "latency" in t.user_attrs and not t.user_attrs.get("is_baseline")
        }
        chosen = [n for n in dict.fromkeys(chosen) if n in compressed]
        return sorted(chosen[: spec.remeasure_max])

    def remeasure_jointly(self, stop: DeferredInterrupt) -> None:
        """Measure the chosen candidates again, together in the same rounds, once no trial runs;
        with ``latency.recipe``, the standard recipe's variants in those rounds too (with
        ``remeasure: off``, beside the front alone; see ``search._recipe``).

        Each is rebuilt from its Candidate (as ``tightfit export`` does) and measured with the
        others on a measurement actor. Kept as the study's ``remeasured_jointly``; a resumed
        search with the same set does not measure it again. Ctrl-C stops it between
        candidates, or after the measurement, before anything is written; a failure (a
        candidate that no longer rebuilds, a lost actor) is logged and loses only this step.
        """
        import ray

        spec = self.config.latency
        if spec.remeasure != "off":
            numbers = self._remeasure_set()
        else:  # the recipe is still measured beside the front, in the same rounds
            numbers = self._front_numbers() if spec.recipe else []
        attrs = self.study.user_attrs
        done = attrs.get("remeasured_jointly", {}).get("trials") == numbers
        if done and (not spec.recipe or _recipe.ATTR in attrs):
            return
        recipes = []
        if spec.recipe:
            stop.waiting_for = "the standard recipe's current variant to be built (seconds)"
            recipes = _recipe.build(self.ws, self.profile, stop.check)
        if len(numbers) + len(recipes) < 2:
            return
        if not self.idle:
            log.warning("%s: no measurement actor left to re-measure with", self.profile.name)
            return
        t0 = time.monotonic()
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        log.info("%s: re-measuring %d candidates together", self.profile.name, len(numbers))
        try:
            onnx = []
            for number in numbers:
                stop.check()
                candidate = Candidate.from_json(trials[number].user_attrs["candidate"])
                onnx.append(self.ws.rebuild(candidate)[0])
            bench = self.idle[0]
            onnx += [r.onnx for r in recipes]
            ref = bench.measure_many.remote(self.profile, onnx, *self._against_baseline())
            stop.waiting_for = (
                f"nothing more: the end-of-search re-measurement of {len(numbers)} candidates "
                f"{'and the standard recipe ' if recipes else ''}is dropped (the trials keep "
                "their own measurements)"
            )
            while not ray.wait([ref], timeout=POLL_S)[0]:
                stop.check()  # Ctrl-C drops the re-measurement at once; its actor is killed
            results = ray.get(ref)
        except Exception as e:  # the search's results stand; only this extra step is lost
            log.warning(
                "%s: re-measuring together failed (%s); the trials keep their own measurements",
                self.profile.name,
                _ray.error_text(e),
            )
            return
        stop.check()
        results, recipe_results = results[: len(numbers)], results[len(numbers) :]
        if recipes:
            self.study.set_user_attr(
                _recipe.ATTR,
                _recipe.record(recipes, recipe_results, self.baseline, self.config.constraints),
            )
        self.study.set_user_attr(
            "remeasured_jointly",
            {
                "trials": numbers,
                "latency_ms": {str(n): r.latency_ms for n, r in zip(numbers, results, strict=True)},
                "ratio_ci": {str(n): r.ratio_ci for n, r in zip(numbers, results, strict=True)},
                "rounds": (results or recipe_results)[0].rounds,
                "disturbed": (results or recipe_results)[0].disturbed,
                "seconds": time.monotonic() - t0,
            },
        )

    def summarise(self, clock: _Clock) -> ProfileOutcome:
        frame = pareto.trials_frame(self.study)
        front = pareto.front_frame(self.study)
        d = self.summary_dir
        files = [
            atomic_write(d / "trials.csv", frame.to_csv(index=False)),
            atomic_write(d / "front.csv", front.to_csv(index=False)),
        ]
        files += [d / "space.json", d / "refused.json"]
        if not front.empty:
            files.append(pareto.front_figure_html(self.study, d / "front.html"))
            files.append(
                pareto.front_figure_png(
                    frame, d / "front.png", f"{self.config.name} on {self.profile.name}"
                )
            )
        feasible = frame[frame["feasible"]] if not frame.empty else frame
        metrics = {
            "n_trials": float(self.n_done),
            "n_failed": float(self.n_failed),
            "n_front": float(len(front)),
            "n_refused_units": float(self.n_refused),
            "baseline_accuracy": self.baseline["accuracy"],
            "baseline_latency_ms": self.baseline["latency_ms"],
            "baseline_size_mb": self.baseline["size_mb"],
            "hypervolume": pareto.hypervolume(front, self.baseline, list(self.config.objectives)),
        }
        if not feasible.empty:
            metrics["best_feasible_speedup"] = float(feasible["speedup"].max())
        for fmt, m in self.study.user_attrs.get("int8_formats_measured", {}).items():
            if isinstance(m, dict):  # int8_format auto: what each format measured
                metrics[f"uniform_int8_{fmt}_latency_ms"] = m["latency_ms"]
        metrics.update(latency_reuse_metrics(self.study))
        metrics.update(joint_metrics(self.study))
        metrics.update(_recipe.metrics(self.study))
        aa = self.study.user_attrs.get("aa_check")
        if aa:
            metrics["aa_ratio"] = aa["ratio"]
            metrics["aa_error"] = aa["error"]
            metrics["aa_exceeded"] = float(aa["exceeded"])
        metrics.update(contention_metrics(self.study))
        # what the driver itself cost (sampling, dispatch, telling, logging), for the whole
        # search: the profiles ran together
        wall = clock.wall_s
        metrics["search_wall_s"] = wall
        metrics["orchestration_s"] = wall - clock.wait_s
        metrics["orchestration_share"] = (wall - clock.wait_s) / wall
        self.tracker.log_summary(
            self.profile.name,
            metrics,
            files,
            params={
                "sampler": self.config.sampler.name,
                "seed": self.config.seed,
                "n_units": len(self.space),
                "int8_format": self.profile.quantization.int8_format,
            },
            step=self.n_done,
        )
        return ProfileOutcome(
            self.profile.name,
            self.study,
            front,
            self.baseline,
            d,
            self.n_done,
            self.n_failed,
            aa_check=aa,
        )


def contention_metrics(study: optuna.Study) -> dict[str, float]:
    """How much of the search's measuring others disturbed: rounds dropped for contention
    over rounds run, and the trials measured under load (too few quiet rounds)."""
    kept = [
        t.user_attrs["latency"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("latency_cache") == "miss" and "latency" in t.user_attrs
    ]
    if not kept:
        return {}
    rounds = sum(k["rounds"] + k.get("rounds_dropped", 0) for k in kept)
    contended = sum(k.get("rounds_contended", 0) for k in kept)
    return {
        "rounds_contended_share": contended / rounds if rounds else 0.0,
        "n_measured_under_load": float(sum(bool(k.get("disturbed")) for k in kept)),
    }


def _best_feasible_speedup(study: optuna.Study) -> float | None:
    best = None
    for t in study.best_trials:
        s = t.user_attrs.get("speedup")
        if s is not None:
            best = max(best or 0.0, s)
    return best


def _knobs_text(c: Candidate) -> str:
    s = c.summary()
    parts = []
    if s["n_pruned_groups"]:
        parts.append(f"prune {s['n_pruned_groups']} groups (mean {s['mean_prune_ratio']:.2f})")
    if s["n_factorized"]:
        parts.append(f"low-rank {s['n_factorized']} layers")
    if s["n_int8"]:
        parts.append(f"int8 {s['n_int8']} layers")
    if s["n_int4"]:
        parts.append(f"int4 {s['n_int4']} layers")
    return ", ".join(parts) or "baseline"
