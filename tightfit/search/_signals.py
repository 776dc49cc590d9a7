"""Ctrl-C that lands between writes, never inside one.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, including inside
Optuna's journal lock or an MLflow write, which leaves a trial told but not recorded (or the
other way round). While the driver loop runs, the first SIGINT only sets a flag; the loop calls
:meth:`DeferredInterrupt.check` at points where nothing is half-written. A second SIGINT
raises at once, for a user who wants out now.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any


class DeferredInterrupt:
    """While entered, the first SIGINT sets ``requested`` and says on stderr what the search
    finishes before it stops (``waiting_for``, kept current by the driver); the second raises."""

    def __init__(self, waiting_for: str = "the current step") -> None:
        self.requested = False
        self.waiting_for = waiting_for
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        print(
            f"\ntightfit: Ctrl-C: stopping after {self.waiting_for}; in-flight trials will be "
            "marked and re-queued (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` here if Ctrl-C was pressed since the last check."""
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
        if exc_type is None:
            self.check()
