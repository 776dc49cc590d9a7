"""The search driver: one process, the only writer of the Optuna study and of the records.

Per hardware profile: load the model, discover the space, open (or resume) the study, run the
pre-flight checks and enqueue the seeds (``_prepare``). Then one loop (``_scheduler``) runs
every profile's trials at once. Compression runs on any worker; measurements run on a profile's
benches (``_benches``). At the end the chosen candidates are measured again together
(``_remeasure``).

:class:`ProfileSearch` is the per-trial state machine: asked, compressing, waiting for a bench,
measuring, told. Every trial is told once (``_tell``). A node that dies takes its work with it:
its compression is rerun elsewhere by the executor, its measurement moved to another bench.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from tightfit import objectives as obj
from tightfit.config import SearchConfig
from tightfit.evaluators import LatencyResult
from tightfit.exceptions import SearchAborted
from tightfit.keys import Status, StudyAttr, TrialAttr
from tightfit.search import _remeasure, _tell
from tightfit.search._executor import Bench, Executor, Recorder, Ref
from tightfit.search._prepare import Prepared, prepare
from tightfit.search._scheduler import Clock, drive
from tightfit.search._signals import DeferredInterrupt
from tightfit.search._tell import Told, error_kind
from tightfit.search.outcome import ProfileOutcome, Progress, SearchOutcome
from tightfit.spaces import Candidate
from tightfit.studies import counted_trials, recover_interrupted
from tightfit.workspace import Setup, StageOne, workspace

log = logging.getLogger(__name__)

FAIL_FAST = 5  # this many trials failing in a row for the same reason, none done yet: stop
MAX_MEASURE_ATTEMPTS = 3  # a measurement whose node died is moved, at most this many times

ProgressHook = Callable[[Progress], None]


def search(
    config: SearchConfig,
    workdir: Path,
    recorder: Recorder,
    progress: ProgressHook | None = None,
    executor: Executor | None = None,
) -> SearchOutcome:
    """Run (or resume) every profile's search in ``workdir``; the caller holds its lock.

    ``executor`` defaults to Ray (a local Ray, or the cluster ``config.ray.address`` names).
    The outcome's fronts are left to the caller (``runs.run_search`` writes the summaries).
    """
    from tightfit.search import _ray

    outcome = SearchOutcome(config=config, workdir=workdir, ui_url=recorder.ui_url())
    profiles = config.hardware_profiles()
    for profile in profiles:  # model, data and export errors before Ray starts
        workspace(Setup.of(config, profile, workdir))
    started = _ray.start_ray(config) if executor is None else False
    executor = executor or _ray.RayExecutor()
    searches: list[ProfileSearch] = []
    try:
        for profile in profiles:  # every profile can be measured, before the first trial
            executor.check(profile)
        for profile in profiles:
            ready = prepare(config, profile, workdir, recorder, executor)
            searches.append(ProfileSearch(config, ready, recorder, progress))
        clock = Clock()
        with DeferredInterrupt("the trials' current steps (a few seconds)") as stop:
            drive(searches, config.concurrency, stop, clock, executor)
            for s in searches:
                s.remeasure(stop)
        clock.end = time.monotonic()
        outcome.wall_s, outcome.wait_s = clock.wall_s, clock.wait_s
        outcome.profiles = [_outcome(s) for s in searches]
    finally:
        for s in searches:
            s.pool.stop()
        if started:
            import ray

            ray.shutdown()
    return outcome


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
    owed_write: Callable[[], None] | None = None  # the record still owed, if any


class ProfileSearch:
    """One profile's trials, from ask to tell (see the module docstring)."""

    def __init__(
        self,
        config: SearchConfig,
        ready: Prepared,
        recorder: Recorder,
        progress: ProgressHook | None = None,
    ) -> None:
        self.config = config
        self.ready = ready
        self.profile = ready.profile
        self.study = ready.study
        self.pool = ready.pool
        self.executor = ready.pool.executor
        self.recorder = recorder
        self.progress = progress or (lambda _: None)
        self.concurrency = config.concurrency_of(self.profile.name)
        self.shared_cores = not self.profile.dedicated  # measures where compression runs
        self.compressing: dict[Ref, _Pending] = {}
        self.waiting: deque[_Pending] = deque()  # compressed, waiting for a bench
        self.measuring: dict[Ref, tuple[Bench, _Pending]] = {}
        self._current: _Pending | None = None  # the trial whose result is being handled
        self.failures: list[str] = []  # this run's failure reasons since its last good trial
        self.succeeded = False  # a trial of this run was evaluated (not failed)
        self.n_done, self.n_failed = counted_trials(self.study)
        self.n_trials = config.n_trials
        if config.strategy != "search":  # a baseline alone: its sweep, at most n_trials
            self.n_trials = min(self.n_trials, int(self.study.user_attrs[StudyAttr.N_PLANNED]))
        self.best_speedup = _best_feasible_speedup(self.study)
        self.evaluated = _evaluated(self.study)  # candidate JSON -> the trial that evaluated it
        self.n_repeats = 0  # this run's repeats: beyond n_trials of them, they count
        self._report()

    # ---- the loop's view ----------------------------------------------------------------
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

    def refs(self) -> list[Ref]:
        return [*self.compressing, *self.measuring, *self.pool.starting]

    def ask_and_dispatch(self) -> None:
        trial = self.study.ask()
        space = self.ready.space
        candidate = space.suggest(trial)
        key = candidate.to_json()
        trial.set_user_attr(TrialAttr.CANDIDATE, key)
        trial.set_user_attr(TrialAttr.IS_BASELINE, candidate.is_baseline)
        trial.set_user_attr(TrialAttr.SUMMARY, _knobs_text(candidate))
        params = {
            **space.values_of(candidate),
            **{f"summary.{k}": v for k, v in candidate.summary().items()},
        }
        run_id = self.recorder.start_trial(self.profile.name, trial.number, params)
        p = _Pending(trial, candidate, run_id)
        earlier = self.evaluated.get(key)
        if earlier is not None:
            first = self.study.get_trials(deepcopy=False)[earlier]
            self._finish(p, _tell.repeated(self.config, first))
            log.info("trial %d repeats trial %d's candidate: its result", trial.number, earlier)
            return
        self.compressing[self.executor.compress(self.ready.setup, candidate)] = p

    def start_measurements(self, limit: int | None = None) -> None:
        """Send waiting trials to idle benches (at most ``limit``)."""
        started = 0
        while self.waiting and self.pool.idle and (limit is None or started < limit):
            p = self.waiting.popleft()
            assert p.stage_one is not None
            p.submitted = time.monotonic()
            bench = self.pool.take()
            ref = self.executor.measure(bench, self.profile, p.stage_one.onnx, self.ready.reference)
            self.measuring[ref] = (bench, p)
            started += 1

    def handle(self, ref: Ref) -> None:
        """One of this profile's results is ready."""
        if ref in self.pool.starting:
            self.pool.started(ref)
            return
        if ref in self.measuring:
            bench, p = self.measuring.pop(ref)
            self._current = p
            self._measured(ref, bench, p)
        else:
            p = self.compressing.pop(ref)
            self._current = p
            self._compressed(ref, p)
        self._current = None
        self._report()

    def expire(self) -> None:
        """Fail the trials whose stage ran past ``trial_timeout_s``, and cancel their work."""
        limit = self.config.trial_timeout_s
        now = time.monotonic()
        for ref, p in list(self.compressing.items()):
            if now - p.submitted > limit:
                self.executor.cancel(ref)
                del self.compressing[ref]
                self._fail(p, f"timed out after {limit:g} s (compression and accuracy)")
        for ref, (bench, p) in list(self.measuring.items()):
            if now - p.submitted > limit:
                del self.measuring[ref]
                self.pool.replace(bench)  # a measurement cannot be cancelled: kill its bench
                self._fail(p, f"timed out after {limit:g} s (latency measurement)")

    def interrupt(self) -> None:
        """Ctrl-C or a crash: mark in-flight trials interrupted and enqueue them again."""
        pending = [
            *self.compressing.values(),
            *self.waiting,
            *(p for _, p in self.measuring.values()),
        ]
        current = self._current
        if current is not None and current not in pending:
            if not current.told:
                pending.append(current)
            elif current.owed_write is not None:
                current.owed_write()  # Optuna has it: finish its record, don't re-run it
        for ref in self.compressing:
            self.executor.cancel(ref)
        for p in pending:
            p.trial.set_user_attr(TrialAttr.INTERRUPTED, True)
            self.study.tell(p.trial, state=optuna.trial.TrialState.FAIL)
            self.study.enqueue_trial(
                p.trial.params, user_attrs={TrialAttr.RETRY_OF: p.trial.number}
            )
            self.recorder.mark_interrupted(
                self.profile.name, p.trial.number, "interrupted; enqueued again"
            )
        for number in recover_interrupted(self.study):  # e.g. one asked but not yet dispatched
            self.recorder.mark_interrupted(self.profile.name, number, "interrupted; enqueued again")
        self.recorder.stop_summary(self.profile.name)

    # ---- a trial's steps ----------------------------------------------------------------
    def _compressed(self, ref: Ref, p: _Pending) -> None:
        try:
            p.stage_one = self.executor.get(ref)
        except Exception as e:
            return self._fail(p, self.executor.error_text(e))
        one = p.stage_one
        assert one is not None
        stopped = _tell.stopped_early(self.config, self.ready.baseline, one)
        if stopped is not None:
            self._finish(p, stopped)
            loss = self.config.quality.loss_name
            log.info(
                "trial %d stopped at stage %s: %s %.4f",
                p.trial.number,
                stopped.attrs[TrialAttr.STAGE],
                loss,
                stopped.attrs[loss],
            )
        elif not self._reuse_or_skip(p, one):
            self.waiting.append(p)
        return None

    def _reuse_or_skip(self, p: _Pending, one: StageOne) -> bool:
        """Finish ``p`` without measuring it, if its latency is cached or predicted dominated."""
        reuse = self.ready.reuse
        p.cache_key = reuse.key(one)
        cached = reuse.cached(p.cache_key)
        if cached is not None:
            p.cache = "hit"
            self._complete(p, cached)
            return True
        p.cache = "miss"
        p.predicted_ms = reuse.predict(one)
        if p.predicted_ms is None:
            return False
        p.trial.set_user_attr(TrialAttr.PREDICTED_LATENCY_MS, p.predicted_ms)
        p.trial.set_user_attr(TrialAttr.PREDICTOR, reuse.predictor_for(one)[0])
        names = list(self.config.objectives)
        front = [dict(zip(names, t.values, strict=True)) for t in self.study.best_trials]
        if reuse.worth_measuring(one, p.predicted_ms, front, self.config.quality.name):
            return False
        self._finish(p, _tell.prescreened(self.config, self.ready.baseline, one, p.predicted_ms))
        log.info(
            "trial %d pre-screened: predicted %.3f ms, dominated", p.trial.number, p.predicted_ms
        )
        return True

    def _measured(self, ref: Ref, bench: Bench, p: _Pending) -> None:
        """A measurement came back: complete the trial, or move it if its node died."""
        try:
            latency = self.executor.get(ref)
        except Exception as e:
            reason = self.executor.error_text(e)
            if not self.executor.is_system_failure(e):
                self.pool.put_back(bench)
                return self._fail(p, f"latency: {reason}")
            self.pool.replace(bench)
            p.moves += 1
            if p.moves >= MAX_MEASURE_ATTEMPTS:
                return self._fail(p, f"latency: the measuring node died {p.moves} times ({reason})")
            log.warning(
                "trial %d: its measuring node died (%s); measuring it on another",
                p.trial.number,
                reason,
            )
            self.waiting.appendleft(p)
            return None
        self.pool.put_back(bench)
        self._complete(p, latency)  # an error here is in recording, not the candidate's
        return None

    def _complete(self, p: _Pending, latency: LatencyResult) -> None:
        one = p.stage_one
        assert one is not None
        dispatch_s = max(0.0, one.started_at - p.dispatched_at) if one.started_at else None
        told = _tell.completed(
            self.config,
            self.ready.baseline,
            p.candidate,
            one,
            latency,
            cache=p.cache,
            moves=p.moves,
            dispatch_s=dispatch_s,
            predicted_ms=p.predicted_ms,
        )
        if told.status == Status.FAILED:
            return self._fail(p, told.error or "")
        measured, baseline = p.cache == "miss", p.candidate.is_baseline
        self.ready.reuse.record(p.cache_key, one, latency, measured=measured, baseline=baseline)
        if told.feasible:
            self.best_speedup = max(self.best_speedup or 0.0, latency.speedup)
        self._finish(p, told)
        return None

    def _fail(self, p: _Pending, reason: str) -> None:
        self._finish(p, _tell.failed(reason))
        log.info("trial %d failed: %s", p.trial.number, reason)
        self._fail_fast(reason)

    def _finish(self, p: _Pending, told: Told) -> None:
        """Tell Optuna, then write the record; an interruption between the two finishes the
        write (``interrupt``), never tells twice."""
        _tell.tell(self.study, p.trial, told)
        p.told = True
        p.owed_write = lambda: self.recorder.record_trial(p.run_id, told)
        p.owed_write()
        p.owed_write = None
        if told.status == Status.REPEAT:  # free: not counted, unless the sampler only repeats
            self.n_repeats += 1
            self.n_done += self.n_repeats > self.n_trials
        else:
            self.n_done += 1
        if told.status == Status.FAILED:
            self.n_failed += 1
        elif told.status != Status.REPEAT:
            self.succeeded = True
            self.evaluated.setdefault(p.candidate.to_json(), p.trial.number)
        best = self.study.best_trials  # the front: computed once per told trial
        if told.status == Status.COMPLETE:
            self.recorder.set_pareto(self.profile.name, {b.number for b in best})
        names = list(self.config.objectives)
        points = [dict(zip(names, t.values, strict=True)) for t in best]
        metrics = {"hypervolume": obj.hypervolume(points, self.ready.baseline, names)}
        if self.best_speedup is not None:
            metrics["best_feasible_speedup"] = self.best_speedup
        self.recorder.log_progress(self.profile.name, metrics, step=self.n_done)

    def _fail_fast(self, reason: str) -> None:
        """A circuit breaker: stop the search when its first ``FAIL_FAST`` trials (of this run)
        all fail for the same reason (numbers and hashes aside): a broken model callable,
        data or runtime would otherwise burn the whole budget on one error."""
        self.failures.append(reason)
        if self.succeeded or len(self.failures) < FAIL_FAST:
            return
        if len({error_kind(r) for r in self.failures[-FAIL_FAST:]}) == 1:
            raise SearchAborted(
                f"profile '{self.profile.name}': the first {len(self.failures)} trials all "
                f"failed with the same error, so the search stopped: {reason} -- fix that and "
                "rerun the same command (the failed trials stay in the study)"
            )

    def _report(self) -> None:
        self.progress(
            Progress(
                self.profile.name, self.n_done, self.n_trials, self.n_failed, self.best_speedup
            )
        )

    # ---- the end ------------------------------------------------------------------------
    def remeasure(self, stop: DeferredInterrupt) -> None:
        r = self.ready
        assert r.ws is not None
        _remeasure.remeasure_jointly(
            self.study, self.config, r.ws, self.pool, r.reference, r.baseline, stop
        )


def _outcome(s: ProfileSearch) -> ProfileOutcome:
    """What ``s`` found; the front is left to the caller's summary (``runs.summary``)."""
    import pandas as pd

    r = s.ready
    return ProfileOutcome(
        s.profile.name,
        s.study,
        pd.DataFrame(),
        r.baseline,
        r.summary_dir,
        s.n_done,
        s.n_failed,
        aa_check=s.study.user_attrs.get(StudyAttr.AA_CHECK),
        n_refused=r.n_refused,
        n_units=len(r.space),
        int8_format=s.profile.quantization.int8_format,
        int8_activation_type=s.profile.quantization.activations,
    )


def _evaluated(study: optuna.Study) -> dict[str, int]:
    """Each candidate (its JSON) evaluated in ``study``, by the first trial that did: complete,
    or stopped or pre-screened for its quality or latency (a failure may not recur)."""
    out: dict[str, int] = {}
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for t in study.get_trials(deepcopy=False, states=states):
        key = t.user_attrs.get(TrialAttr.CANDIDATE)
        if key is not None and TrialAttr.REPEAT_OF not in t.user_attrs:
            out.setdefault(key, t.number)
    return out


def _best_feasible_speedup(study: optuna.Study) -> float | None:
    best = None
    for t in study.best_trials:
        s = t.user_attrs.get(TrialAttr.SPEEDUP)
        if s is not None:
            best = max(best or 0.0, s)
    return best


def _knobs_text(c: Candidate) -> str:
    s = c.summary()
    parts = []
    if s["n_dropped_blocks"]:
        n = s["n_dropped_blocks"]
        parts.append(f"drop {n} block{'s' * (n != 1)}")
    if s["n_pruned_groups"]:
        parts.append(f"prune {s['n_pruned_groups']} groups (mean {s['mean_prune_ratio']:.2f})")
    if s["n_factorized"]:
        parts.append(f"low-rank {s['n_factorized']} layers")
    if s["n_int8"]:
        parts.append(f"int8 {s['n_int8']} layers")
    if s["n_int4"]:
        parts.append(f"int4 {s['n_int4']} layers")
    return ", ".join(parts) or "baseline"
