"""Latency measured on the target runtime, interleaved with the baseline.

Protocol (design decision 8; research/surgery-and-latency.md part B), the same for every
runtime (``runtimes``): fixed threads pinned to their CPUs where the OS allows, spinning off,
warm-up by time; then rounds in which the candidate and the baseline each run a block of
inferences, in random order. A round's ratio is the candidate's block median over the
baseline's; the score is the median ratio over rounds, with a bootstrap confidence interval.
Each model runs in ``sessions`` runtime sessions that the rounds take in turn: two sessions of
one model differ by a few percent (where the runtime placed its memory), a bias one session
cannot reveal, so the interval resamples sessions as well as rounds (a cluster bootstrap).
After ``rounds`` rounds, more are added until the interval is narrow enough (``target_ci``), or
``max_rounds`` or the time budget is reached. Slow drifts of a shared machine hit both models of
a round alike and cancel in the ratio. The raw block times are kept (``samples_ms``).
``latency_ms`` is that ratio times a reference latency of the baseline measured once per
search, so trials measured at different times are comparable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydantic import Field

from tightfit._records import Record
from tightfit.evaluators.contention import CpuWatch
from tightfit.evaluators.runtimes import environment, open_runner, pinned
from tightfit.hardware_profiles import HardwareProfile
from tightfit.task import is_token_input

N_BOOTSTRAP = 2000


class LatencyResult(Record):
    latency_ms: float = Field(description="ratio x baseline reference latency")
    ratio: float = Field(description="median over rounds of candidate/baseline block medians")
    ratio_ci: tuple[float, float] = Field(description="95% bootstrap interval of the ratio")
    speedup: float
    median_ms: float = Field(description="candidate's median over all its timed inferences")
    p90_ms: float
    p99_ms: float = 0.0
    baseline_median_ms: float
    rounds: int
    iters_per_block: int
    rounds_dropped: int = Field(
        0,
        description="rounds left out: others took the pinned CPUs (rounds_contended), or the "
        "baseline ran slow",
    )
    rounds_contended: int = Field(
        0, description="rounds in which other processes or steal took the pinned CPUs"
    )
    foreign_cpu: float = Field(
        0.0,
        description="median share of the pinned CPUs' time others took per window of rounds "
        "(steal included; a window lasts until the counters can tell, 0.2 s on 2 CPUs); -1 "
        "where it could not be watched or no window was long enough",
    )
    max_foreign_cpu_seen: float = Field(
        0.0, description="the largest such share in one window of rounds"
    )
    seconds: float = Field(0.0, description="wall time of the measurement")
    attempts: int = Field(1, description="measurements taken; >1 when earlier ones were disturbed")
    disturbed: bool = Field(
        False,
        description="measured under load: fewer than 3 rounds ran undisturbed, even in the "
        "best attempt (every round is then used, and the trial is flagged)",
    )
    node_id: str = Field("", description="the Ray node that measured (empty outside Ray)")
    window: tuple[float, float] | None = Field(
        None, description="when the measurement ran there (unix seconds, start and end)"
    )
    phases_ms: dict[str, float] = Field(
        default_factory=dict,
        description="a generation profile's medians for the candidate: prefill_ms, "
        "decode_ms_per_token, end_to_end_ms (latency_ms is one of them, per the profile)",
    )
    baseline_phases_ms: dict[str, float] = Field(
        default_factory=dict, description="the same for the baseline, in the same rounds"
    )
    environment: dict[str, str] = Field(default_factory=dict)
    samples_ms: dict[str, list[list[float]]] = Field(
        default_factory=dict, description="raw times per model per round (ms)"
    )

    @property
    def ci_half_width(self) -> float:
        """Half the CI's width as a fraction of the ratio."""
        return (self.ratio_ci[1] - self.ratio_ci[0]) / 2 / self.ratio

    def summary(self) -> dict[str, Any]:
        """The result without its raw samples and environment (what a trial keeps)."""
        return self.model_dump(mode="json", exclude={"environment", "samples_ms"})


def input_feed(
    shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str], profile: HardwareProfile, seed: int
) -> dict[str, np.ndarray]:
    """Random inputs with the profile's batch size and shapes (latency needs no real data).

    Token inputs (``tightfit.task.is_token_input``) take the profile's ``sequence_length``
    (a generation profile's: its ``prompt_tokens``); ``input_shapes`` overrides any input's
    per-sample shape.
    """
    rng = np.random.default_rng(seed)
    feed = {}
    length = profile.generation.prompt_tokens if profile.generation else profile.sequence_length
    for name, sample_shape in shapes.items():
        dtype = np.dtype(dtypes[name])
        if length and is_token_input(sample_shape, dtype):
            sample_shape = (length,)
        shape = (profile.batch_size, *profile.input_shapes.get(name, sample_shape))
        if dtype.kind == "f":
            feed[name] = rng.standard_normal(shape).astype(dtype)
        else:
            # ones: valid token ids, and masks that attend to every position (a full sequence)
            feed[name] = np.ones(shape, dtype=dtype)
    return feed


def _warm(run: Callable[[], None], seconds: float) -> float:
    """Run for ``seconds`` (at least 3 times); return the median time of one run in seconds."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bootstrap_ci(
    values: np.ndarray, seed: int, level: float = 0.95, groups: np.ndarray | None = None
) -> tuple[float, float]:
    """The ``level`` interval of the median of ``values``, by bootstrap.

    With ``groups`` (a label per value: the session that measured it), a cluster bootstrap:
    each replicate draws the groups with replacement, then values within each drawn group, so
    the interval includes how far the groups disagree, not only the spread within them.
    """
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=float)
    labels = np.unique(groups) if groups is not None else np.array([])
    if len(labels) < 2:
        idx = rng.integers(0, len(values), size=(N_BOOTSTRAP, len(values)))
        medians = np.median(values[idx], axis=1)
    else:
        assert groups is not None
        members = [values[groups == g] for g in labels]
        sizes = np.array([len(m) for m in members])
        table = np.full((len(members), sizes.max()), np.nan)  # a row per group, NaN-padded
        for row, m in zip(table, members, strict=True):
            row[: len(m)] = m
        drawn = rng.integers(0, len(members), size=(N_BOOTSTRAP, len(members), 1))
        within = (rng.random((N_BOOTSTRAP, len(members), sizes.max())) * sizes[drawn]).astype(int)
        sample = table[drawn, within]
        sample[np.arange(sizes.max()) >= sizes[drawn]] = np.nan  # a drawn group's own size
        medians = np.nanmedian(sample.reshape(N_BOOTSTRAP, -1), axis=1)
    lo, hi = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def measure_latency(
    candidate: Path,
    baseline: Path,
    profile: HardwareProfile,
    feed: dict[str, np.ndarray],
    baseline_ref_ms: float | None = None,
    seed: int = 0,
) -> LatencyResult:
    """Measure ``candidate`` against ``baseline`` under ``profile``'s protocol.

    A round in which other processes (or the hypervisor) took more than ``max_foreign_cpu`` of
    the pinned CPUs' time was disturbed (``contention.CpuWatch`` reads it from ``/proc/stat``);
    so was, with a reference latency of the baseline, a round whose baseline ran more than
    ``max_baseline_slowdown`` times slower than that reference. Such a round's ratio is biased,
    since contention slows models unequally, and it is left out; rounds are added until enough
    undisturbed ones ran, within the budget. A measurement with fewer than 3 undisturbed rounds
    is repeated, up to ``max_attempts`` times, and the least disturbed attempt is kept, flagged
    ``disturbed`` (measured under load).
    """
    return measure_jointly([candidate], baseline, profile, feed, baseline_ref_ms, seed)[0]


def measure_jointly(
    candidates: Sequence[Path],
    baseline: Path,
    profile: HardwareProfile,
    feed: dict[str, np.ndarray],
    baseline_ref_ms: float | None = None,
    seed: int = 0,
) -> list[LatencyResult]:
    """Measure several candidates in the same rounds: ``measure_latency`` for each, at once.

    Every round runs a block of each candidate and of the baseline, in a random order, so
    candidates a few percent apart are compared under the same state of the machine. Measured
    one after the other, minutes apart, such candidates swap places: on the 2-core VM of
    ``benchmarks/predictor_replay.py`` two such passes over 42 digits candidates ranked them
    alike at 0.71 to 0.84, and two joint passes at 0.99. Rounds are added until every
    candidate's interval is narrow enough; the time budget is per candidate. Used to re-measure
    a search's candidates at its end (``latency.remeasure``) and the points ``tightfit export``
    writes.
    """
    if not candidates:
        return []
    job = _Job(candidates, baseline, profile, feed)
    if baseline_ref_ms is None:
        return _measure_once(job, None, seed)
    protocol = profile.measurement
    attempts: list[list[LatencyResult]] = []
    while len(attempts) < protocol.max_attempts:
        attempt = _measure_once(job, baseline_ref_ms, seed + len(attempts))
        attempts.append(attempt)
        if not attempt[0].disturbed:
            break
    best = min(attempts, key=lambda rs: (rs[0].disturbed, rs[0].rounds_dropped))
    return [r.model_copy(update={"attempts": len(attempts)}) for r in best]


class _Job(NamedTuple):
    """What a measurement runs: the candidates and the baseline, on a profile, fed ``feed``."""

    candidates: Sequence[Path]
    baseline: Path
    profile: HardwareProfile
    feed: dict[str, np.ndarray]


def _measure_once(job: _Job, baseline_ref_ms: float | None, seed: int) -> list[LatencyResult]:
    candidates, baseline, profile, feed = job
    protocol = profile.measurement
    n = len(candidates)
    names = [f"candidate{i}" for i in range(n)]
    t_start = time.perf_counter()
    n_sessions = protocol.sessions
    with pinned(profile) as cpus:
        paths = dict(zip(names, candidates, strict=True)) | {"baseline": baseline}
        runners = {
            name: [open_runner(path, profile, feed) for _ in range(n_sessions)]
            for name, path in paths.items()
        }
        per_run = max(
            _warm(r.run, protocol.warmup_s / n_sessions)
            for sessions in runners.values()
            for r in sessions
        )
        iters = min(
            protocol.max_block_iters,
            max(protocol.min_iters_per_block, math.ceil(protocol.min_block_s / per_run)),
        )
        rng = np.random.default_rng(seed)
        samples: dict[str, list[np.ndarray]] = {name: [] for name in runners}
        every: list[np.ndarray] = []  # each candidate's ratio, every round
        session: list[int] = []  # which session of each model ran the round
        kept: list[bool] = []  # whether the round ran undisturbed (as far as judged yet)
        watch = CpuWatch(cpus) if not profile.is_gpu else None
        foreign: list[float] = []  # share of the pinned CPUs others took, per judged window
        slow: list[bool] = []  # whether the round's baseline ran slow
        busy: list[bool] = []  # whether the round fell in a window others took the CPUs in
        window = watch.snapshot() if watch else None
        window_rounds: list[int] = []
        slow_ms = (
            baseline_ref_ms * protocol.max_baseline_slowdown
            if baseline_ref_ms is not None
            else None
        )
        order = list(runners)
        t_rounds = time.perf_counter()
        while True:
            session.append(len(every) % n_sessions)
            block = {
                order[i]: runners[order[i]][session[-1]].block(iters)
                for i in rng.permutation(len(order))
            }
            for name, times in block.items():
                samples[name].append(times)
            base_ms = float(np.median(block["baseline"]))
            every.append(np.array([np.median(block[name]) / base_ms for name in names]))
            # a round whose baseline ran slow is left out (the cores were taken, watched or not)
            slow.append(slow_ms is not None and base_ms > slow_ms)
            busy.append(False)
            window_rounds.append(len(every) - 1)
            # and so is every round of a window in which others took the pinned CPUs (seen in
            # /proc/stat); a window spans rounds until it is long enough for the counters' ticks
            end = watch.snapshot() if watch else None
            if watch and watch.judgeable(window, end):
                load = watch.load(window, end)
                assert load is not None
                foreign.append(load.total)
                if load.total > protocol.max_foreign_cpu:
                    for i in window_rounds:
                        busy[i] = True
                window, window_rounds = end, []
            kept = [not (a or b) for a, b in zip(slow, busy, strict=True)]
            spent = (
                time.perf_counter() - t_rounds > protocol.budget_s * n
                or len(every) >= 2 * protocol.max_rounds
            )
            if sum(kept) >= protocol.rounds:
                ratios = np.array(every)[np.array(kept)]
                if len(ratios) >= protocol.max_rounds or all(
                    _narrow(ratios[:, i], protocol.target_ci, seed) for i in range(n)
                ):
                    break
            if spent and len(every) >= protocol.rounds:  # the minimum is always run
                break
    disturbed = sum(kept) < 3  # the cores were taken all along: every round is used, flagged
    used = np.ones(len(every), bool) if disturbed else np.array(kept)
    ratios, groups = np.array(every)[used], np.array(session)[used]
    base = np.concatenate(samples["baseline"])
    ref = baseline_ref_ms if baseline_ref_ms is not None else float(np.median(base))
    env = environment(profile, feed)
    if cpus is not None:
        env["pinned_cpus"] = ",".join(map(str, cpus))
    if n > 1:
        env["measured_jointly_with"] = str(n - 1)
    env["sessions_per_model"] = str(n_sessions)
    env["contention_watch"] = (
        "proc-stat" if watch is not None and watch.available else "unavailable"
    )
    seconds = time.perf_counter() - t_start
    results = []
    for i, name in enumerate(names):
        cand = np.concatenate(samples[name])
        ratio = float(np.median(ratios[:, i]))
        own_env = dict(env)
        phases = {key: _phases(runners[key]) for key in (name, "baseline")}
        for key, runner in (("candidate", runners[name][0]), ("baseline", runners["baseline"][0])):
            if hasattr(runner, "timing"):
                own_env[f"timing_{key}"] = runner.timing
        results.append(
            LatencyResult(
                latency_ms=ratio * ref,
                ratio=ratio,
                ratio_ci=bootstrap_ci(ratios[:, i], seed, groups=groups),
                speedup=1.0 / ratio,
                median_ms=float(np.median(cand)),
                p90_ms=float(np.quantile(cand, 0.9)),
                p99_ms=float(np.quantile(cand, 0.99)),
                baseline_median_ms=float(np.median(base)),
                rounds=len(ratios),
                rounds_dropped=len(every) - len(ratios),
                rounds_contended=sum(busy),
                foreign_cpu=float(np.median(foreign)) if foreign else -1.0,
                max_foreign_cpu_seen=float(max(foreign)) if foreign else -1.0,
                disturbed=disturbed,
                iters_per_block=iters,
                seconds=seconds,
                phases_ms=phases[name],
                baseline_phases_ms=phases["baseline"],
                environment=own_env,
                samples_ms={
                    key: [np.round(b, 5).tolist() for b in samples[src]]
                    for key, src in (("candidate", name), ("baseline", "baseline"))
                },
            )
        )
    return results


def _phases(sessions: list[Any]) -> dict[str, float]:
    """The median of each phase a generation runner timed, over its sessions (else empty)."""
    merged: dict[str, list[float]] = {}
    for runner in sessions:
        for key, values in getattr(runner, "phases", {}).items():
            merged.setdefault(key, []).extend(values)
    return {key: float(np.median(v)) for key, v in merged.items() if v}


def _narrow(ratios: np.ndarray, target_ci: float, seed: int) -> bool:
    """Whether more rounds would no longer narrow the interval: judged over rounds alone, since
    how far the sessions disagree no number of rounds changes."""
    lo, hi = bootstrap_ci(ratios, seed)
    return (hi - lo) / 2 <= target_ci * float(np.median(ratios))
