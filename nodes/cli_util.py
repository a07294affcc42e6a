"""Helpers shared by the node command lines: signal handling and common flags."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


def on_shutdown_signals(callback: Callable[[], None], force: Callable[[], None] | None = None) -> threading.Event:
    """Call `callback` on the first SIGINT/SIGTERM and `force` on the next ones (main thread only); returns the event
    the first one sets. Both must return at once (they run in a signal handler)."""
    fired = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if not fired.is_set():
            fired.set()
            logger.info("received %s, shutting down cleanly (send it again to force the stop)", name)
            callback()
        elif force is not None:
            logger.warning("received %s again: forcing the stop", name)
            force()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
    return fired


def run_standalone(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                   run: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """Parse `argv` with one node's own parser and run it (`python -m recon.nodes.<kind>_cli` starts faster than
    the full `recon` parser, which node processes spawned by tests and `--distributed` rely on)."""
    from recon.errors import ReconError
    from recon.utils.log import setup_logging

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return run(args)
    except ReconError as e:
        logger.error("%s", e)
        return 1
