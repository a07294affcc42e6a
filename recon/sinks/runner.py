"""The per-frame loop `source -> backend.step -> sinks`, used by `recon replay` (and by tests of backends).

The loop owns no output: sinks do. It counts and times each stage, flushes the backend at the end of the
stream (windowed backends emit late), and turns a reader's CorruptFrameError into a recorded stop instead of
a traceback, so the caller can still close its sinks and write partial outputs before exiting non-zero.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from recon.backends.base import Backend
from recon.errors import CorruptFrameError
from recon.sinks.base import ResultSink
from recon.types import Frame

logger = logging.getLogger(__name__)


@dataclass
class LoopStats:
    """Counters of one pass over a source.

    `results_lost`: results that did not reach the sinks (a forced stop, a sink that failed on them);
    `node_status`: the reconstruction node's status at the end when the pass ran through the nodes.
    """

    frames_in: int = 0
    frames_dropped_by_stride: int = 0
    results_out: int = 0
    metric: bool | None = None
    wall_s: float = 0.0
    timings_s: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "backend": 0.0, "sinks": 0.0})
    stopped_on_error: str | None = None
    results_lost: int = 0
    node_status: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames_in / self.wall_s if self.wall_s > 0 else 0.0


def run_stream(frames: Iterable[Frame], backend: Backend, sink: ResultSink, *, max_frames: int | None = None,
               stride: int = 1, on_frame: Callable[[LoopStats], None] | None = None) -> LoopStats:
    """Feed `frames` to `backend` and every result to `sink` (a SinkGroup for several); returns the counters.

    Args:
        max_frames: stop after this many frames were given to the backend (None: all).
        stride: give only every `stride`-th frame of the source to the backend.
        on_frame: called after each frame (progress bars).
    """
    stats = LoopStats()
    it = iter(frames)
    index = -1
    t_start = time.perf_counter()

    def emit(results: list) -> None:
        t0 = time.perf_counter()
        for result in results:
            sink.on_result(result)
            stats.results_out += 1
            stats.metric = bool(result.metric) if stats.metric is None else stats.metric and bool(result.metric)
        stats.timings_s["sinks"] += time.perf_counter() - t0

    while max_frames is None or stats.frames_in < max_frames:
        t0 = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            break
        except CorruptFrameError as e:
            stats.stopped_on_error = str(e)
            logger.error("stopping: %s (use --on-error skip to skip corrupt frames)", e)
            break
        finally:
            stats.timings_s["read"] += time.perf_counter() - t0
        index += 1
        if index % stride:
            stats.frames_dropped_by_stride += 1
            continue
        t0 = time.perf_counter()
        results = backend.step(frame)
        stats.timings_s["backend"] += time.perf_counter() - t0
        stats.frames_in += 1
        emit(results)
        if on_frame is not None:
            on_frame(stats)
    t0 = time.perf_counter()
    results = backend.flush()
    stats.timings_s["backend"] += time.perf_counter() - t0
    emit(results)
    stats.wall_s = time.perf_counter() - t_start
    return stats
