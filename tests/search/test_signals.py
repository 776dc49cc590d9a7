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


def test_the_first_sigint_says_what_it_waits_for(capsys) -> None:
    with pytest.raises(KeyboardInterrupt), DeferredInterrupt("the re-measurement") as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
    err = capsys.readouterr().err
    assert "Ctrl-C: stopping after the re-measurement" in err and "Ctrl-C again" in err
