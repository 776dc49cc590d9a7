"""Contention is detected on the pinned CPUs, and rounds taken by others are dropped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tightfit.evaluators.contention import PROC_STAT, CpuWatch

pytestmark = pytest.mark.skipif(
    not PROC_STAT.exists() or not hasattr(os, "sched_setaffinity"),
    reason="per-CPU counters (/proc/stat) and CPU affinity are Linux's",
)

BURN = "import time\nwhile True:\n    pass\n"


@contextmanager
def burner_on(cpu: int) -> Iterator[None]:
    """Another process spinning on ``cpu``, as a neighbour would."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BURN], preexec_fn=lambda: os.sched_setaffinity(0, {cpu})
    )
    try:
        time.sleep(0.3)  # it runs
        yield
    finally:
        proc.kill()
        proc.wait()


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_another_process_on_the_cpu_is_seen_and_our_own_work_is_not() -> None:
    cpu = sorted(os.sched_getaffinity(0))[0]
    watch = CpuWatch([cpu])
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        start = watch.snapshot()
        _spin(1.0)  # our own work on the watched CPU
        ours = watch.load(start, watch.snapshot())
    finally:
        os.sched_setaffinity(0, allowed)
    with burner_on(cpu):
        start = watch.snapshot()
        time.sleep(1.0)
        theirs = watch.load(start, watch.snapshot())
    assert ours is not None and theirs is not None
    assert theirs.total > 0.6  # the neighbour had the CPU
    assert ours.foreign < theirs.foreign / 2  # our own spinning is subtracted


def test_rounds_taken_by_a_neighbour_are_dropped_and_flagged(tmp_path: Path, fast_profile) -> None:
    import torch

    from tests import models
    from tightfit.evaluators.latency import measure_latency
    from tightfit.kernels import export_onnx

    torch.manual_seed(0)
    model = export_onnx(
        models.tiny_resnet(), (torch.randn(2, 1, 16, 16),), ["image"], tmp_path / "m.onnx"
    )
    feed = {"image": np.random.default_rng(0).standard_normal((1, 1, 16, 16), dtype=np.float32)}
    # rounds of 0.2 s at least: /proc/stat ticks at 100 Hz, so a round of a few milliseconds
    # (the fast test profile's) sees one tick or none; the built-in profiles' rounds are 0.1 s+
    protocol = fast_profile.measurement.model_copy(update={"min_block_s": 0.1})
    profile = fast_profile.model_copy(update={"intra_op_threads": 1, "measurement": protocol})
    cpu = sorted(os.sched_getaffinity(0))[0]  # the CPU ``pinned`` measures on
    with burner_on(cpu):
        result = measure_latency(model, model, profile, feed, baseline_ref_ms=1.0, seed=0)
    assert result.environment["contention_watch"] == "proc-stat"
    assert result.foreign_cpu > profile.measurement.max_foreign_cpu
    assert result.rounds_contended > result.rounds - 3  # fewer than 3 rounds were quiet
    assert result.disturbed  # never quiet enough: flagged as measured under load
    assert result.attempts == profile.measurement.max_attempts  # and tried again first
