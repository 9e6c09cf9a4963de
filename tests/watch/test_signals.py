"""A watch's SIGINT/SIGTERM across its steps: whichever step runs is told, and a signal between two steps (a
connection dropped, the next not yet made) stops the next step at once instead of ending the process unclean."""

from __future__ import annotations

import signal
import threading

from reconciler.watch.session import _restore_signals, _Signals, _stop_on_signals


def test_the_running_step_is_told_and_the_one_before_it_is_back_in_charge_after():
    signals, told = _Signals(), []
    with signals.to(lambda why: told.append(("outer", why))):
        with signals.to(lambda why: told.append(("inner", why))):
            signals.received("SIGTERM received")
        assert told == [("inner", "SIGTERM received")]
        signals.received("SIGINT received")
    assert told == [("inner", "SIGTERM received"), ("outer", "SIGINT received")]


def test_a_signal_between_steps_stops_the_next_step_as_it_begins():
    signals = _Signals()
    signals.received("SIGTERM received")  # no step runs: kept
    stop = threading.Event()
    with signals.to(lambda why: stop.set()):
        assert stop.is_set()
    assert signals.why == "SIGTERM received"


def test_a_real_sigterm_between_steps_is_kept_not_fatal():
    signals = _Signals()
    previous = _stop_on_signals(signals.received)
    try:
        signal.raise_signal(signal.SIGTERM)  # delivered to this thread before the call returns
        stopped = []
        with signals.to(stopped.append):
            pass
        assert stopped == ["SIGTERM received"]
    finally:
        _restore_signals(previous)
