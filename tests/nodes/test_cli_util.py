"""`ShutdownSignals`, the one SIGINT/SIGTERM handling: the first stops cleanly, the next forces, handlers restored."""

from __future__ import annotations

import os
import signal

from recon.nodes.cli_util import ShutdownSignals


def test_first_signal_stops_second_forces_and_previous_handlers_come_back() -> None:
    calls: list[str] = []
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with ShutdownSignals(lambda: calls.append("stop"), lambda: calls.append("force")) as signals:
        assert not signals.fired.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.fired.is_set() and calls == ["stop"]
        os.kill(os.getpid(), signal.SIGINT)
        assert calls == ["stop", "force"]
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_callback_set_after_entering_is_called_and_no_force_means_later_signals_are_ignored() -> None:
    calls: list[str] = []
    with ShutdownSignals() as signals:
        signals.callback = lambda: calls.append("close queue")
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # no force: the process keeps finishing its work
    assert calls == ["close queue"] and signals.fired.is_set()
