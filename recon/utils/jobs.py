"""One function call on a daemon thread of its own, its result (or error) read by the caller once it is done.

Why: work that a live step must not wait for (the map layer's loop verification, the monocular tracker's
bundle adjustment in `recon.backends.geometric.background.BundleJob`) runs beside the stream and is taken up at a
later step. The caller owns everything the call reads (copies), so nothing is locked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ThreadJob(Generic[T]):
    """`fn(*args, **kwargs)` run once on a daemon thread (a dropped owner does not keep the process alive)."""

    def __init__(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> None:
        self.name = name
        self.result: T | None = None
        self.error: str | None = None  # the exception's text, when the call raised
        self._call = (fn, args, kwargs)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> ThreadJob[T]:
        self._thread.start()
        return self

    def _run(self) -> None:
        fn, args, kwargs = self._call
        try:
            self.result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - reported by the owner when it takes the result
            self.error = f"{type(e).__name__}: {e}"
            logger.debug("%s failed", self.name, exc_info=True)
        self._call = (fn, (), {})  # the inputs go with the thread
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the call returned; False if `timeout` passed first."""
        return self._done.wait(timeout)
