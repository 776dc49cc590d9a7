"""Latency measured on the target runtime, interleaved with the baseline.

Protocol (design decision 8; research/surgery-and-latency.md part B), the same for every
runtime (``backends``): fixed threads pinned to their CPUs where the OS allows, spinning off,
warm-up by time; then rounds in which the candidate and the baseline each run a block of
inferences, in random order. A round's ratio is the candidate's block median over the
baseline's; the score is the median ratio over rounds, with a bootstrap confidence interval.
After ``rounds`` rounds, more are added until the interval is narrow enough (``target_ci``), or
``max_rounds`` or the time budget is reached. Slow drifts of a shared machine hit both models of
a round alike and cancel in the ratio. The raw block times are kept (``samples_ms``).
``latency_ms`` is that ratio times a reference latency of the baseline measured once per
search, so trials measured at different times are comparable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from tightfit._records import Record
from tightfit.evaluators.backends import environment, open_runner, pinned
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
        0, description="rounds left out because the baseline ran slow (the cores were taken)"
    )
    seconds: float = Field(0.0, description="wall time of the measurement")
    attempts: int = Field(1, description="measurements taken; >1 when earlier ones were disturbed")
    disturbed: bool = Field(
        False, description="fewer than 3 rounds ran undisturbed, even in the best attempt"
    )
    node_id: str = Field("", description="the Ray node that measured (empty outside Ray)")
    window: tuple[float, float] | None = Field(
        None, description="when the measurement ran there (unix seconds, start and end)"
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

    Token inputs (``tightfit.task.is_token_input``) take the profile's ``sequence_length``;
    ``input_shapes`` overrides any input's per-sample shape.
    """
    rng = np.random.default_rng(seed)
    feed = {}
    for name, sample_shape in shapes.items():
        dtype = np.dtype(dtypes[name])
        if profile.sequence_length and is_token_input(sample_shape, dtype):
            sample_shape = (profile.sequence_length,)
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


def bootstrap_ci(values: np.ndarray, seed: int, level: float = 0.95) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(N_BOOTSTRAP, len(values)))
    medians = np.median(values[idx], axis=1)
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

    With a reference latency of the baseline, a round whose baseline ran more than
    ``max_baseline_slowdown`` times slower than that reference was disturbed (another process
    took the cores): its ratio is biased, since contention slows models unequally, and it is
    left out. A measurement with fewer than 3 undisturbed rounds is repeated, up to
    ``max_attempts`` times, and the least disturbed attempt is kept.
    """
    if baseline_ref_ms is None:
        return _measure_once(candidate, baseline, profile, feed, None, seed)
    protocol = profile.measurement
    attempts: list[LatencyResult] = []
    while len(attempts) < protocol.max_attempts:
        attempt = _measure_once(
            candidate, baseline, profile, feed, baseline_ref_ms, seed + len(attempts)
        )
        attempts.append(attempt)
        if not attempt.disturbed:
            break
    best = min(attempts, key=lambda r: (r.disturbed, r.rounds_dropped))
    disturbed = best.disturbed
    return best.model_copy(update={"attempts": len(attempts), "disturbed": disturbed})


def _measure_once(
    candidate: Path,
    baseline: Path,
    profile: HardwareProfile,
    feed: dict[str, np.ndarray],
    baseline_ref_ms: float | None = None,
    seed: int = 0,
) -> LatencyResult:
    protocol = profile.measurement
    t_start = time.perf_counter()
    with pinned(profile) as cpus:
        runners = {
            "candidate": open_runner(candidate, profile, feed),
            "baseline": open_runner(baseline, profile, feed),
        }
        per_run = max(_warm(r.run, protocol.warmup_s) for r in runners.values())
        iters = min(
            protocol.max_block_iters,
            max(protocol.min_iters_per_block, math.ceil(protocol.min_block_s / per_run)),
        )
        rng = np.random.default_rng(seed)
        samples: dict[str, list[np.ndarray]] = {"candidate": [], "baseline": []}
        every: list[float] = []  # the ratio of every round
        ratios: list[float] = []  # of the rounds whose baseline ran at its reference speed
        slow_ms = (
            baseline_ref_ms * protocol.max_baseline_slowdown
            if baseline_ref_ms is not None
            else None
        )
        t_rounds = time.perf_counter()
        while True:
            order = ["candidate", "baseline"] if rng.random() < 0.5 else ["baseline", "candidate"]
            block = {name: runners[name].block(iters) for name in order}
            for name, times in block.items():
                samples[name].append(times)
            every.append(float(np.median(block["candidate"]) / np.median(block["baseline"])))
            # a round whose baseline ran slow had its cores taken by another process: left out
            if slow_ms is None or np.median(block["baseline"]) <= slow_ms:
                ratios.append(every[-1])
            spent = (
                time.perf_counter() - t_rounds > protocol.budget_s
                or len(every) >= 2 * protocol.max_rounds
            )
            if len(ratios) >= protocol.rounds:
                ci = bootstrap_ci(np.array(ratios), seed)
                narrow = (ci[1] - ci[0]) / 2 <= protocol.target_ci * float(np.median(ratios))
                if narrow or len(ratios) >= protocol.max_rounds:
                    break
            if spent and len(every) >= protocol.rounds:  # the minimum is always run
                break
    disturbed = len(ratios) < 3  # the cores were taken all along: every round is used, flagged
    if disturbed:
        ratios = every
    ci = bootstrap_ci(np.array(ratios), seed)
    cand = np.concatenate(samples["candidate"])
    base = np.concatenate(samples["baseline"])
    ratio = float(np.median(ratios))
    ref = baseline_ref_ms if baseline_ref_ms is not None else float(np.median(base))
    env = environment(profile, feed)
    for name, runner in runners.items():
        if hasattr(runner, "timing"):
            env[f"timing_{name}"] = runner.timing
    if cpus is not None:
        env["pinned_cpus"] = ",".join(map(str, cpus))
    return LatencyResult(
        latency_ms=ratio * ref,
        ratio=ratio,
        ratio_ci=ci,
        speedup=1.0 / ratio,
        median_ms=float(np.median(cand)),
        p90_ms=float(np.quantile(cand, 0.9)),
        p99_ms=float(np.quantile(cand, 0.99)),
        baseline_median_ms=float(np.median(base)),
        rounds=len(ratios),
        rounds_dropped=len(every) - len(ratios),
        disturbed=disturbed,
        iters_per_block=iters,
        seconds=time.perf_counter() - t_start,
        environment=env,
        samples_ms={k: [np.round(b, 5).tolist() for b in v] for k, v in samples.items()},
    )
