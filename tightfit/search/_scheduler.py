"""The driver loop: every profile's trials at once, over one executor.

At most ``concurrency`` trials are in flight over the search, and at most a profile's own
concurrency per profile; profiles take turns asking for new trials. Measurements of profiles
without nodes of their own (``HardwareProfile.dedicated`` false) run on this machine's cores:
one at a time, only while no compression runs, and no compression is dispatched while one is
queued or running, so a latency is never measured beside other work. Ctrl-C takes effect
between complete steps; in-flight trials are then marked interrupted and enqueued again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from tightfit.search._executor import Executor, Ref
from tightfit.search._signals import DeferredInterrupt

POLL_S = 0.5


class Scheduled(Protocol):
    """One profile's search as the loop sees it (``_driver.ProfileSearch``)."""

    shared_cores: bool  # measures on the cores compression runs on
    compressing: dict[Ref, Any]
    waiting: Any  # compressed, waiting for a bench (a sized collection)
    measuring: dict[Ref, Any]

    @property
    def finished(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def wants_trial(self) -> bool: ...

    def ask_and_dispatch(self) -> None: ...

    def start_measurements(self, limit: int | None = None) -> None: ...

    def refs(self) -> list[Ref]: ...

    def handle(self, ref: Ref) -> None: ...

    def expire(self) -> None: ...

    def interrupt(self) -> None: ...


@dataclass
class Clock:
    """The loop's wall time, and how much of it went to waiting on workers."""

    start: float = field(default_factory=time.monotonic)
    wait_s: float = 0.0
    end: float | None = None

    @property
    def wall_s(self) -> float:
        return (self.end or time.monotonic()) - self.start


def drive(
    searches: list[Any],
    concurrency: int,
    stop: DeferredInterrupt,
    clock: Clock,
    executor: Executor,
) -> None:
    """Run every search's trials until each is finished (see the module docstring)."""
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
            ready = executor.wait(list(owner), timeout=POLL_S)
            clock.wait_s += time.monotonic() - t_wait
            for ref in ready:
                owner[ref].handle(ref)
            for s in searches:
                s.expire()
    except BaseException:
        for s in searches:
            s.interrupt()
        raise
