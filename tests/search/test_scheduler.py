"""The driver loop and the per-trial state machine, driven by a fake executor: no Ray, no model.

A real Optuna study, a real compression space and the real ``ProfileSearch`` and ``drive``;
the executor (compression and benches) and the record keeper are fakes whose work finishes
after a set number of the loop's polls, so that overlap, timeouts, interruption and a dying
measuring node can be staged exactly. The end-to-end tests run the same code on Ray.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tightfit.config import config_from_dict
from tightfit.evaluators import LatencyResult
from tightfit.hardware_profiles import HardwareProfile, get_profile
from tightfit.keys import Status, TrialAttr
from tightfit.search import _tell
from tightfit.search._benches import BenchPool
from tightfit.search._driver import MAX_MEASURE_ATTEMPTS, ProfileSearch
from tightfit.search._prepare import Prepared
from tightfit.search._scheduler import Clock, drive
from tightfit.spaces import CompressionSpace, Unit
from tightfit.workspace import MeasurementReference, Setup, StageOne

BASELINE = {"accuracy": 0.9, "latency_ms": 1.0, "size_mb": 1.0}


class NodeDied(Exception):
    """What the fake raises for a measurement whose node died (a system failure)."""


@dataclass(eq=False)  # compared (and hashed) by identity, as Ray's refs
class Job:
    kind: str  # compress, measure or probe
    ticks: int  # polls until done (-1: never)
    result: Any = None
    error: BaseException | None = None
    bench: Any = None
    submitted: int = 0
    handled: int | None = None  # the poll its result was read (or it was cancelled)
    cancelled: bool = False


@dataclass
class FakeExecutor:
    """Work finishes ``ticks`` polls (``wait`` calls) after it is submitted."""

    compress_ticks: int = 2
    measure_ticks: int = 2
    slots_: int = 1
    stuck: set[int] = field(default_factory=set)  # compressions (by order) that never finish
    measure_stuck: set[int] = field(default_factory=set)  # measurements that never finish
    dying: set[Any] = field(default_factory=set)  # benches whose node dies on their next call
    # benches whose readiness probe raises (an exception) or answers what is missing (a text)
    probes: dict[Any, Any] = field(default_factory=dict)
    tick: int = 0
    jobs: list[Job] = field(default_factory=list)
    killed: list[Any] = field(default_factory=list)
    benches: itertools.count = field(default_factory=itertools.count)

    def _submit(self, job: Job) -> Job:
        job.submitted = self.tick
        self.jobs.append(job)
        return job

    def compress(self, setup: Any, candidate: Any, subset_only: bool = False) -> Job:
        n = sum(j.kind == "compress" for j in self.jobs)
        strength = len(candidate.prune) + len(candidate.rank) + len(candidate.bits)
        one = StageOne(
            accuracy=0.9 - 0.001 * strength,
            size_mb=1.0 - 0.01 * strength,
            onnx=candidate.to_json().encode(),
            seconds=0.0,
        )
        ticks = -1 if n in self.stuck else self.compress_ticks
        return self._submit(Job("compress", ticks, result=one))

    def new_bench(self, profile: HardwareProfile) -> str:
        return f"bench{next(self.benches)}"

    def bench_ready(self, bench: Any, profile: HardwareProfile) -> Job:
        answer = self.probes.get(bench)
        if isinstance(answer, BaseException):
            return self._submit(Job("probe", 0, error=answer, bench=bench))
        return self._submit(Job("probe", 0, result=answer, bench=bench))

    def measure(self, bench: Any, profile: HardwareProfile, onnx: bytes, ref: Any) -> Job:
        n = sum(j.kind == "measure" for j in self.jobs)
        if bench in self.dying:
            return self._submit(Job("measure", 1, error=NodeDied(bench), bench=bench))
        ratio = 1.0 - 0.01 * (len(onnx) % 17)
        result = LatencyResult(
            latency_ms=ratio,
            ratio=ratio,
            ratio_ci=(ratio * 0.99, ratio * 1.01),
            speedup=1 / ratio,
            median_ms=ratio,
            p90_ms=ratio,
            baseline_median_ms=1.0,
            rounds=5,
            iters_per_block=10,
            node_id=str(bench),
        )
        ticks = -1 if n in self.measure_stuck else self.measure_ticks
        return self._submit(Job("measure", ticks, result=result, bench=bench))

    def measure_many(self, *args: Any) -> Job:  # pragma: no cover - the loop never calls it
        raise AssertionError("not used by the loop")

    def measure_reference(self, *args: Any) -> Job:  # pragma: no cover
        raise AssertionError("not used by the loop")

    def _done(self, job: Job) -> bool:
        return job.ticks >= 0 and self.tick - job.submitted >= job.ticks

    def wait(self, refs: list[Job], timeout: float) -> list[Job]:
        self.tick += 1
        ready = [r for r in refs if self._done(r)]
        if not ready:
            time.sleep(0.001)
        return ready[:1]

    def get(self, ref: Job) -> Any:
        assert self._done(ref), "the driver read a result before it was ready"
        ref.handled = self.tick
        if ref.error is not None:
            raise ref.error
        return ref.result

    def cancel(self, ref: Job) -> None:
        ref.cancelled, ref.handled = True, self.tick

    def kill(self, bench: Any) -> None:
        self.killed.append(bench)

    def check(self, profile: HardwareProfile) -> None:
        pass

    def slots(self, profile: HardwareProfile) -> int:
        return self.slots_

    def warm_up(self, n_workers: int) -> None:
        pass

    def is_system_failure(self, exc: BaseException) -> bool:
        return isinstance(exc, NodeDied)

    def error_text(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"


class FakeRecorder:
    def __init__(self) -> None:
        self.finished: dict[str, str] = {}  # run id -> status
        self.interrupted: list[int] = []
        self.runs = itertools.count()

    def start_trial(self, profile: str, trial: int, params: dict[str, Any]) -> str:
        return f"run{next(self.runs)}"

    def record_trial(self, run_id: str, told: Any) -> None:
        assert run_id not in self.finished, "a trial was recorded twice"
        self.finished[run_id] = told.status

    def mark_interrupted(self, profile: str, trial: int, reason: str) -> None:
        self.interrupted.append(trial)

    def set_pareto(self, *a: Any) -> None: ...

    def log_progress(self, *a: Any, **k: Any) -> None: ...

    def log_files(self, *a: Any) -> None: ...

    def reconcile(self, *a: Any) -> int:
        return 0

    def stop_summary(self, profile: str) -> None: ...

    def ui_url(self) -> str:
        return ""


class Stop:
    """``DeferredInterrupt`` as the loop sees it: Ctrl-C after ``after`` checks, if set."""

    def __init__(self, after: int | None = None) -> None:
        self.after, self.n = after, 0

    def check(self) -> None:
        self.n += 1
        if self.after is not None and self.n > self.after:
            raise KeyboardInterrupt


class NoReuse:
    """Latency reuse off: no cache, no predictor (their logic has tests of its own)."""

    def key(self, one: Any) -> str:
        return ""

    def cached(self, key: str) -> None:
        return None

    def predict(self, one: Any) -> None:
        return None

    def record(self, *a: Any, **k: Any) -> None: ...


def dedicated_profile() -> HardwareProfile:
    """A profile measured on nodes of its own (a Ray resource): it may measure while
    compression runs elsewhere."""
    raw = get_profile("cpu-ort").model_dump()
    return HardwareProfile.model_validate({**raw, "name": "lat", "ray_resources": {"lat": 1}})


def make_search(
    executor: FakeExecutor,
    profile: HardwareProfile | None = None,
    n_trials: int = 10,
    concurrency: int = 3,
    timeout_s: float = 600.0,
) -> tuple[ProfileSearch, FakeRecorder]:
    profile = profile or get_profile("cpu-ort")
    config = config_from_dict(
        {
            "name": "fake",
            "model": {"callable": "digits-cnn"},
            "data": {"callable": "digits"},
            "n_trials": n_trials,
            "concurrency": concurrency,
            "trial_timeout_s": timeout_s,
            "staged": {"enabled": False},
            "constraints": {"max_accuracy_drop": 0.5},
        }
    )
    units = [Unit(f"layer{i}", "prune_ratio", (0.0, 0.25, 0.5)) for i in range(4)]
    space = CompressionSpace(units, "base", seed=0)
    study = optuna.create_study(
        directions=config.directions, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    pool = BenchPool(profile, executor)  # type: ignore[arg-type]
    pool.start(config.concurrency_of(profile.name), start_s=5.0)
    reference = MeasurementReference(
        baseline_onnx=b"base", input_shapes={}, input_dtypes={}, reference_ms=1.0
    )
    ready = Prepared(
        profile=profile,
        setup=Setup(config=config, profile=profile, cache_dir="unused"),
        study=study,
        space=space,
        baseline=dict(BASELINE),
        reference=reference,
        reuse=NoReuse(),  # type: ignore[arg-type]
        pool=pool,
        summary_dir=None,  # type: ignore[arg-type]
    )
    recorder = FakeRecorder()
    return ProfileSearch(config, ready, recorder), recorder  # type: ignore[arg-type]


def run(search: ProfileSearch, executor: FakeExecutor, stop: Stop | None = None) -> None:
    drive([search], search.config.concurrency, stop or Stop(), Clock(), executor)  # type: ignore[arg-type]


def overlaps(executor: FakeExecutor) -> list[tuple[Job, Job]]:
    """Pairs of (measurement, compression) in flight at the same time: from submission until
    the driver read the result."""
    finished = [j for j in executor.jobs if j.handled is not None]
    measures = [j for j in finished if j.kind == "measure"]
    compresses = [j for j in finished if j.kind == "compress"]
    return [
        (m, c)
        for m in measures
        for c in compresses
        if m.submitted < c.handled and c.submitted < m.handled  # type: ignore[operator]
    ]


def states(search: ProfileSearch) -> list[TrialState]:
    return [t.state for t in search.study.get_trials(deepcopy=False)]


def test_local_measurement_and_compression_never_overlap() -> None:
    executor = FakeExecutor()
    search, recorder = make_search(executor, n_trials=12, concurrency=3)
    run(search, executor)
    assert states(search) == [TrialState.COMPLETE] * 12
    assert set(recorder.finished.values()) == {"complete"}
    in_flight = [
        sum(1 for c in executor.jobs if c.kind == "compress" and c.submitted == j.submitted)
        for j in executor.jobs
        if j.kind == "compress"
    ]
    assert max(in_flight) == 3  # compressions did run side by side, up to the concurrency
    assert overlaps(executor) == []


def test_a_dedicated_profile_measures_while_compression_runs() -> None:
    """The rule above is the shared-cores rule: with benches of its own a profile overlaps
    (so ``overlaps`` does detect overlap)."""
    executor = FakeExecutor(slots_=2)
    search, _ = make_search(executor, profile=dedicated_profile(), n_trials=12, concurrency=3)
    run(search, executor)
    assert states(search) == [TrialState.COMPLETE] * 12
    assert overlaps(executor)


def test_a_compression_past_the_timeout_fails_its_trial_and_is_cancelled() -> None:
    executor = FakeExecutor(stuck={1, 4})
    search, recorder = make_search(executor, n_trials=8, timeout_s=0.2)
    run(search, executor)
    trials = search.study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 2 and len(trials) == 8
    assert all("timed out after 0.2 s (compression" in t.user_attrs["error"] for t in failed)
    stuck = [j for j in executor.jobs if j.kind == "compress" and j.ticks < 0]
    assert [j.cancelled for j in stuck] == [True, True]
    assert sorted(recorder.finished.values()).count("failed") == 2


def test_a_stuck_measurement_times_out_and_its_bench_is_replaced() -> None:
    executor = FakeExecutor(measure_stuck={2})
    search, _ = make_search(executor, n_trials=6, timeout_s=0.2)
    run(search, executor)
    [failed] = [t for t in search.study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    assert "timed out after 0.2 s (latency measurement)" in failed.user_attrs["error"]
    assert executor.killed == ["bench0"]  # the stuck bench; its replacement measured the rest
    assert states(search).count(TrialState.COMPLETE) == 5


def test_interrupt_enqueues_in_flight_trials_again_and_records_each_once() -> None:
    executor = FakeExecutor()
    search, recorder = make_search(executor, n_trials=12, concurrency=3)
    with pytest.raises(KeyboardInterrupt):
        run(search, executor, Stop(after=9))
    trials = search.study.get_trials(deepcopy=False)
    interrupted = [t for t in trials if t.user_attrs.get(TrialAttr.INTERRUPTED)]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    retried = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs[TrialAttr.RETRY_OF] for t in retried) == sorted(
        t.number for t in interrupted
    )
    assert sorted(recorder.interrupted) == sorted(t.number for t in interrupted)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(recorder.finished) == len(done) > 0  # each told trial recorded once
    assert all(j.cancelled for j in executor.jobs if j.kind == "compress" and j.handled is None)


def test_a_measurement_whose_node_died_moves_to_another_bench() -> None:
    executor = FakeExecutor(slots_=2, dying={"bench0"})
    search, _ = make_search(executor, profile=dedicated_profile(), n_trials=6, concurrency=2)
    run(search, executor)
    trials = search.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    moved = [t for t in trials if t.user_attrs[TrialAttr.MEASUREMENT_MOVES]]
    assert len(moved) == 1 and moved[0].user_attrs[TrialAttr.LATENCY]["node_id"] != "bench0"
    assert executor.killed == ["bench0"]  # and a replacement started (bench2)
    assert {j.bench for j in executor.jobs if j.kind == "probe"} == {"bench0", "bench1", "bench2"}


def test_a_measurement_fails_once_its_node_died_too_often() -> None:
    executor = FakeExecutor()
    executor.dying = {f"bench{i}" for i in range(MAX_MEASURE_ATTEMPTS + 1)}
    search, _ = make_search(executor, n_trials=1, concurrency=1)
    run(search, executor)
    [trial] = search.study.get_trials(deepcopy=False)
    assert trial.state == TrialState.FAIL
    assert f"died {MAX_MEASURE_ATTEMPTS} times" in trial.user_attrs["error"]


def test_a_bench_that_died_before_answering_is_replaced() -> None:
    # seen on a loaded 2-core machine: the actor's worker died before its probe answered
    executor = FakeExecutor(slots_=2, probes={"bench0": NodeDied("bench0")})
    search, _ = make_search(executor, profile=dedicated_profile(), n_trials=4, concurrency=2)
    run(search, executor)
    assert states(search) == [TrialState.COMPLETE] * 4
    assert executor.killed[:1] == ["bench0"]
    assert {j.bench for j in executor.jobs if j.kind == "measure"} == {"bench1", "bench2"}


def test_benches_that_keep_dying_before_answering_stop_the_search() -> None:
    from tightfit.exceptions import ConfigError
    from tightfit.search._benches import MAX_START_FAILURES

    executor = FakeExecutor(probes={f"bench{i}": NodeDied("gone") for i in range(10)})
    with pytest.raises(ConfigError, match=rf"{MAX_START_FAILURES + 1} measurement actors in a row"):
        make_search(executor)
    assert len(executor.killed) == MAX_START_FAILURES + 1


def test_a_bench_without_its_runtime_stops_the_search_at_once() -> None:
    from tightfit.exceptions import ConfigError

    executor = FakeExecutor(probes={"bench0": "no CUDAExecutionProvider"})
    with pytest.raises(ConfigError, match="'cpu-ort' cannot measure: no CUDAExecutionProvider"):
        make_search(executor)
    assert executor.killed == ["bench0"]  # not replaced: the profile is at fault


def test_a_candidate_evaluated_before_is_told_its_result_and_not_counted() -> None:
    """81 candidates, 120 trials: the random sampler must repeat. Each repeat is told the first
    evaluation's constraints without being compressed again, and does not count, until one
    run's repeats outnumber n_trials (a sampler that only repeats still ends: a random draw
    finds all 81 in about 400 on average)."""
    executor = FakeExecutor()
    search, recorder = make_search(executor, n_trials=120, concurrency=1)
    run(search, executor)
    trials = search.study.get_trials(deepcopy=False)
    repeats = [t for t in trials if TrialAttr.REPEAT_OF in t.user_attrs]
    firsts = [t for t in trials if TrialAttr.REPEAT_OF not in t.user_attrs]
    by_candidate = {t.user_attrs[TrialAttr.CANDIDATE]: t for t in firsts}
    assert len(by_candidate) == len(firsts) <= 81  # each candidate evaluated once
    assert sum(j.kind == "compress" for j in executor.jobs) == len(firsts)
    for t in repeats:
        first = by_candidate[t.user_attrs[TrialAttr.CANDIDATE]]
        assert t.user_attrs[TrialAttr.REPEAT_OF] == first.number < t.number
        assert t.state == TrialState.PRUNED and t.constraints == first.constraints
    assert len(repeats) == 120 + (120 - len(firsts))  # counted from the 121st repeat on
    assert list(recorder.finished.values()).count("repeat") == len(repeats)


def test_every_status_but_failed_finishes_its_run_and_is_not_an_optuna_failure() -> None:
    """The tracker ends a run FINISHED for Status.FINISHED; the driver tells Optuna STATES."""
    assert set(_tell.STATES) == Status.FINISHED | {Status.FAILED}
    assert {s for s, state in _tell.STATES.items() if state == TrialState.FAIL} == {Status.FAILED}
