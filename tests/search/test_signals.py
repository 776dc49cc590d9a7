"""The first Ctrl-C waits for a safe point; the second one stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from tightfit.search._signals import DeferredInterrupt


def test_first_sigint_is_deferred_to_check_second_raises_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), DeferredInterrupt() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # a write here would not be cut
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        stop.check()
    assert signal.getsignal(signal.SIGINT) is before


def test_exit_raises_a_pending_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt), DeferredInterrupt():
        os.kill(os.getpid(), signal.SIGINT)
    with DeferredInterrupt() as stop:
        pass
    assert not stop.requested
