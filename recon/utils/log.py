"""Logging set-up for the CLI and the nodes (structured, one line per event, no prints)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once; `RECON_LOG_LEVEL` overrides the default INFO. OpenCV's own messages are
    limited to errors (see `quiet_opencv`)."""
    level = level or os.environ.get("RECON_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format=_FORMAT)
    quiet_opencv()


def quiet_opencv() -> None:
    """OpenCV writes its warnings straight to stderr (`[ WARN:0@0.05] global cap_v4l.cpp:914 ...`), interleaved
    with our log lines and with no way to route them into Python logging; keep only its errors. An OPENCV_LOG_LEVEL
    the user set wins (it is read when cv2 is first imported)."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and os.environ["OPENCV_LOG_LEVEL"] == "ERROR":
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@contextlib.contextmanager
def opencv_silenced() -> Iterator[None]:
    """No OpenCV messages at all inside the block (a camera probe whose failure we report ourselves)."""
    import cv2

    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


class WarnOnce:
    """Logs the first occurrence of each fault kind at WARNING, then only counts.

    A node receiving a flood of malformed messages must stay observable without drowning its log.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, message: str, *args: object) -> None:
        with self._lock:
            n = self._counts.get(kind, 0) + 1
            self._counts[kind] = n
        if n == 1:
            self._logger.warning("[%s] " + message + " (further faults of this kind are only counted)", kind, *args)

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __deepcopy__(self, memo: dict) -> WarnOnce:
        """A fresh counter on the same logger (a copied session, recon.backends.base.spawn_sharing_model)."""
        return WarnOnce(self._logger)
