"""Capture-to-output latency of one stream over a sliding window (p50 / p95 / p99), thread-safe.

Every result carries its frame's capture time (`capture_ns`, sender clock); whoever outputs it (the
reconstruction node when publishing, a viewer when drawing) adds `now - capture_ns` here. The window is
bounded in count and in age, so a figure describes the last minute, not the whole run.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np


class LatencyWindow:
    """The last `size` latencies (milliseconds) not older than `horizon_s`."""

    def __init__(self, size: int = 1024, horizon_s: float = 60.0) -> None:
        self._values: collections.deque[tuple[float, float]] = collections.deque(maxlen=size)
        self._horizon_s = horizon_s
        self._lock = threading.Lock()
        self.count = 0

    def add(self, latency_ms: float) -> None:
        # No lock (called per frame): a deque append is atomic, also against `values()` trimming the old end under
        # the lock; each window has one writer at a time (the thread processing its stream's frame).
        self._values.append((time.monotonic(), float(latency_ms)))
        self.count += 1

    def add_since(self, capture_ns: int, now_ns: int | None = None) -> float:
        """Add `now - capture_ns` (wall clock) and return it in milliseconds."""
        ms = ((time.time_ns() if now_ns is None else now_ns) - int(capture_ns)) / 1e6
        self.add(ms)
        return ms

    def values(self) -> np.ndarray:
        """Latencies in the window, oldest first."""
        cutoff = time.monotonic() - self._horizon_s
        with self._lock:
            while self._values and self._values[0][0] < cutoff:
                self._values.popleft()
            return np.array([v for _, v in self._values], dtype=np.float64)

    def summary(self) -> dict[str, float | int]:
        """`{n, p50, p95, p99, max}` in milliseconds over the window (`n` 0 and no percentiles when empty)."""
        v = self.values()
        if not len(v):
            return {"n": 0}
        p50, p95, p99 = np.percentile(v, [50, 95, 99])
        return {"n": int(len(v)), "p50": round(float(p50), 3), "p95": round(float(p95), 3),
                "p99": round(float(p99), 3), "max": round(float(v.max()), 3)}
