"""Helpers shared by the node command lines (and `recon replay` / `recon live`): signal handling and common flags.

Bag topics: `--topic`, `--depth-topic`, `--camera-info-topic` choose which topics of a ROS bag to read (default:
chosen by message type, see `recon.datasets.bag`); `none` turns depth or the bag's CameraInfo off.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def add_topic_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """`--topic`, `--depth-topic`, `--camera-info-topic` (bags)."""
    parser.add_argument("--topic", default=None, metavar="TOPIC",
                        help="bags: colour image topic (default: the Image/CompressedImage topic with a colour "
                             "encoding)")
    parser.add_argument("--depth-topic", default=None, metavar="TOPIC",
                        help="bags: depth topic registered to the colour image, 16UC1/32FC1/compressedDepth "
                             "(default: the one in the colour camera's frame or named aligned/registered; none: "
                             "no depth)")
    parser.add_argument("--camera-info-topic", default=None, metavar="TOPIC",
                        help="bags: CameraInfo topic (default: the one next to the colour topic; none: ignore it)")


def topic_options(args: argparse.Namespace) -> dict[str, str]:
    """The bag topic options that were given (`none` -> "" = off), as keywords of `open_sequence`/`open_source`."""
    out = {}
    for name in ("topic", "depth_topic", "camera_info_topic"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = "" if value.lower() == "none" and name != "topic" else value
    return out


class ShutdownSignals:
    """SIGINT/SIGTERM: the first calls `callback` and sets `fired`, the next ones call `force` (if any).

    The one signal handling of recon's processes (node command lines, `recon live`, the ROS node), so a stop
    always lets queued work finish and a second signal cuts it short. As a context manager it restores the
    previous handlers on exit; `install` keeps it for the process's life. Handlers install on the main thread
    only (elsewhere this is a no-op). `callback` may be set after entering (the ROS node builds its queue inside);
    both must return at once (they run in a signal handler).
    """

    def __init__(self, callback: Callable[[], None] | None = None, force: Callable[[], None] | None = None) -> None:
        self.callback = callback
        self.force = force
        self.fired = threading.Event()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if not self.fired.is_set():
            self.fired.set()
            logger.info("received %s, shutting down cleanly%s", name,
                        " (send it again to force the stop)" if self.force is not None else "")
            if self.callback is not None:
                self.callback()
        elif self.force is not None:
            logger.warning("received %s again: forcing the stop", name)
            self.force()

    def install(self) -> threading.Event:
        """Take over SIGINT/SIGTERM (remembering the previous handlers); returns `fired`."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self.fired

    def __enter__(self) -> ShutdownSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def on_shutdown_signals(callback: Callable[[], None], force: Callable[[], None] | None = None) -> threading.Event:
    """`ShutdownSignals(callback, force)` installed for the process's life; returns the event the first signal sets."""
    return ShutdownSignals(callback, force).install()


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
