"""Helpers shared by the node command lines: signal handling and common flags."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


def on_shutdown_signals(callback: Callable[[], None]) -> threading.Event:
    """Call `callback` once on the first SIGINT/SIGTERM (main thread only); returns the event it sets."""
    fired = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if not fired.is_set():
            fired.set()
            logger.info("received %s, shutting down cleanly", signal.Signals(signum).name)
            callback()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
    return fired
