"""Contention on the CPUs a measurement is pinned to: detected, not inferred.

Linux counts every CPU's time in ``/proc/stat`` (user, system, irq, ... and, on a VM, *steal*:
time the hypervisor gave to another guest). Over a round of a latency measurement, the busy
time of the pinned CPUs minus this process's own CPU time is what other processes took from
them; steal is what the host took. Either slows the models of the round unequally (int8 and
fp32 kernels share caches and memory bandwidth differently), so a round that others disturbed
is dropped rather than averaged in, and measured again within the protocol's budget.

The counters tick at ``SC_CLK_TCK`` (100 Hz), and each snapshot may be a tick off per CPU: a
round of a few milliseconds cannot be judged on its own (one tick more reads as 100% taken).
So rounds are judged in windows: consecutive rounds until the window holds ``MIN_TICKS`` (40)
ticks of the CPUs' time (0.2 s on two CPUs), where the rounding is at most 5% and the threshold
(``MeasurementProtocol.max_foreign_cpu``, 10%) sits above it; every round of a window others
took is dropped. Rounds of a last window too short to judge are kept (the slow-baseline test
still applies to them). On this project's 2-core VM, 100 ms windows read a median of 0% taken
when quiet (p90 7%, p99 12%) and 17% beside a neighbour busy on one core in bursts. Where
``/proc/stat`` does not exist (macOS, Windows) nothing is watched, and the result says so
(``environment['contention_watch']``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
MIN_TICKS = 40  # of the watched CPUs' time, in a window that is judged


@dataclass(frozen=True)
class Snapshot:
    wall_s: float
    own_cpu_s: float  # this process, every thread
    busy_ticks: int  # the watched CPUs' non-idle time, steal excluded
    steal_ticks: int


@dataclass(frozen=True)
class Load:
    """What others took of the watched CPUs between two snapshots, as shares of their time."""

    foreign: float  # other processes (busy time not ours)
    steal: float  # the hypervisor (other guests)

    @property
    def total(self) -> float:
        return self.foreign + self.steal


class CpuWatch:
    """Watches ``cpus`` (None: every CPU this process may use)."""

    def __init__(self, cpus: list[int] | None) -> None:
        if cpus is None and hasattr(os, "sched_getaffinity"):
            cpus = sorted(os.sched_getaffinity(0))
        self.cpus = set(cpus or [])
        self.available = bool(self.cpus) and PROC_STAT.exists()
        self.hz = os.sysconf("SC_CLK_TCK") if self.available else 100

    def snapshot(self) -> Snapshot | None:
        if not self.available:
            return None
        busy = steal = 0
        with PROC_STAT.open() as f:
            for line in f:
                if not line.startswith("cpu"):
                    break  # the cpu lines come first, then other counters
                if line.startswith("cpu "):
                    continue  # the sum over all CPUs
                name, *fields = line.split()
                if int(name[3:]) not in self.cpus:
                    continue
                # user nice system idle iowait irq softirq steal guest guest_nice
                values = [int(v) for v in fields[:8]]
                values += [0] * (8 - len(values))
                busy += values[0] + values[1] + values[2] + values[5] + values[6]
                steal += values[7]
        return Snapshot(time.perf_counter(), time.process_time(), busy, steal)

    def judgeable(self, start: Snapshot | None, end: Snapshot | None) -> bool:
        """Whether the time from ``start`` to ``end`` holds enough ticks to be judged."""
        if start is None or end is None:
            return False
        return (end.wall_s - start.wall_s) * len(self.cpus) * self.hz >= MIN_TICKS

    def load(self, start: Snapshot | None, end: Snapshot | None) -> Load | None:
        """What others took of the watched CPUs from ``start`` to ``end`` (None: unwatched)."""
        if start is None or end is None:
            return None
        capacity = (end.wall_s - start.wall_s) * len(self.cpus)
        if capacity <= 0:
            return Load(0.0, 0.0)
        busy_s = (end.busy_ticks - start.busy_ticks) / self.hz
        own_s = end.own_cpu_s - start.own_cpu_s
        steal_s = (end.steal_ticks - start.steal_ticks) / self.hz
        return Load(max(0.0, busy_s - own_s) / capacity, max(0.0, steal_s) / capacity)
