"""Logging set-up for the CLI and the nodes (structured, one line per event, no prints)."""

from __future__ import annotations

import logging
import os
import threading

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once; `RECON_LOG_LEVEL` overrides the default INFO."""
    level = level or os.environ.get("RECON_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format=_FORMAT)


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
