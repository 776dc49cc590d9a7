"""A profile's measurement actors ("benches"): one per device it may use at once.

On one machine (a profile with no Ray resource or label) that is one bench; on a cluster, as
many as there are devices (slots), at most the profile's concurrency. A bench whose node died,
or that stopped answering, is killed and replaced; Ray places the new one once a device is free.

A bench whose process or node died before it answered its readiness probe is replaced too, up
to ``MAX_START_FAILURES`` times in a row (a worker lost to memory pressure or a node restarting
is not the profile's fault). A bench that answers that its runtime is missing is the profile's
fault: that stops the search before its first trial.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.search._executor import Bench, Executor, Ref

log = logging.getLogger(__name__)

BENCH_START_S = 300.0  # the first bench must be up by then
MAX_START_FAILURES = 3  # benches that died before answering, in a row, before giving up


class BenchPool:
    def __init__(self, profile: HardwareProfile, executor: Executor) -> None:
        self.profile = profile
        self.executor = executor
        self.benches: list[Bench] = []  # every bench alive
        self.idle: list[Bench] = []  # those ready and not measuring
        self.starting: dict[Ref, Bench] = {}  # readiness probe -> bench, until it answers
        self.start_failures = 0  # benches in a row whose process died before they answered

    def start(self, concurrency: int, start_s: float = BENCH_START_S) -> None:
        """Start the profile's benches and wait until the first answers."""
        n = min(self.executor.slots(self.profile), concurrency) if self.profile.dedicated else 1
        for _ in range(max(n, 1)):
            self.add()
        deadline = time.monotonic() + start_s
        while not self.idle:
            for ref in self.executor.wait(list(self.starting), timeout=5.0):
                self.started(ref, strict=True)
            if not self.idle and time.monotonic() > deadline:
                raise ConfigError(
                    f"hardware profile '{self.profile.name}': no measurement actor could start "
                    f"within {start_s:g} s; its devices may be held by another search "
                    "(see `ray status`)"
                )

    def add(self) -> None:
        bench = self.executor.new_bench(self.profile)
        self.benches.append(bench)
        self.starting[self.executor.bench_ready(bench, self.profile)] = bench

    def started(self, ref: Ref, strict: bool = False) -> None:
        """A new bench answered its readiness probe: put it to work, or drop it.

        ``strict`` (while the search starts): a bench that cannot measure stops the search.
        """
        bench = self.starting.pop(ref)
        try:
            missing = self.executor.get(ref)
        except Exception as e:
            missing = self.executor.error_text(e)
            if self.executor.is_system_failure(e):
                self.start_failures += 1
                if self.start_failures <= MAX_START_FAILURES:
                    log.warning(
                        "a measurement actor of %s died before it answered (%s); starting another",
                        self.profile.name,
                        missing,
                    )
                    self.replace(bench)
                    return
                missing = (
                    f"{self.start_failures} measurement actors in a row died before they "
                    f"answered (the last: {missing}); see the Ray worker logs (`ray logs`)"
                )
        if not missing:
            self.start_failures = 0
            self.idle.append(bench)
            return
        self.drop(bench)
        if strict:
            raise ConfigError(f"hardware profile '{self.profile.name}' cannot measure: {missing}")
        log.warning("a measurement actor of %s could not start: %s", self.profile.name, missing)

    def take(self) -> Bench:
        """The longest idle bench (devices take turns)."""
        return self.idle.pop(0)

    def put_back(self, bench: Bench) -> None:
        self.idle.append(bench)

    def drop(self, bench: Bench) -> None:
        if bench in self.benches:
            self.benches.remove(bench)
        if bench in self.idle:
            self.idle.remove(bench)
        self.executor.kill(bench)

    def replace(self, bench: Bench) -> None:
        """Kill ``bench`` (dead or stuck) and start another."""
        self.drop(bench)
        self.add()

    def stop(self) -> None:
        """Free the devices (the next profile, or another search, may need them)."""
        for bench in list(self.benches):
            self.drop(bench)
        self.starting.clear()

    def call(self, what: str, *args: Any) -> Any:
        """Run one of the executor's bench calls on an idle bench and wait for it (the
        pre-flight checks: the pool is not yet serving trials)."""
        return self.executor.get(getattr(self.executor, what)(self.idle[0], self.profile, *args))
