"""The sink interface: small objects that consume backend results, shared by `recon replay` and the nodes.

The per-frame flow everywhere is `source -> backend.step -> sinks`. A sink sees every `FrameResult` in
emission order (including late results from windowed backends and `is_update` revisions of a `seq` already
seen) and writes or draws it; `close()` finishes its output. Sinks never import rerun or zmq themselves
unless they live outside core (the Rerun logger lives in `recon.viewer`).

Two optional hooks, called by whoever fans results out (the viewer node, `SinkGroup`) on sinks that have them:

- `on_segment(stream_id, segment, reason)`: the stream's world frame changed (a reset, or a node restart that
  could not restore its state); `segment` counts the stream's world frames from 0. Results after the call are
  in the new world frame, so a sink must not mix them with the earlier ones. File writers that know nothing of
  segments get one instance per segment through `SegmentedSink`.
- `on_latency(stream_id, seq, t_ns, latency_ms)`: the capture-to-publish latency the node measured for a result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from recon.types import FrameResult

logger = logging.getLogger(__name__)


@runtime_checkable
class ResultSink(Protocol):
    """Consumes results; `close` writes whatever is buffered and releases resources (idempotent)."""

    def on_result(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


def call_hook(sink: Any, hook: str, *args: Any) -> None:
    """Call the optional `hook` (`on_segment`, `on_latency`) of `sink` when it has one."""
    fn = getattr(sink, hook, None)
    if callable(fn):
        fn(*args)


def segment_path(path: str | Path, segment: int) -> Path:
    """The output file of world segment `segment`: `path` itself for the first, `<stem>.seg<k><suffix>` after."""
    path = Path(path)
    return path if segment == 0 else path.with_name(f"{path.stem}.seg{segment}{path.suffix}")


class SegmentedSink:
    """One sink per world segment, so two world frames never share an output file.

    `factory(segment)` builds the sink of a segment (segment 0 at once, the others when a stream first enters
    them); each stream's results go to the sink of its current segment (`on_segment`). A stream's k-th world
    frame is segment k, so e.g. `trajectory.tum` holds every stream's first world frame and
    `trajectory.seg1.tum` the second world frame of those that had one.
    """

    def __init__(self, factory: Callable[[int], ResultSink]) -> None:
        self.factory = factory
        self.segments: list[ResultSink] = [factory(0)]
        self.name = getattr(self.segments[0], "name", type(self.segments[0]).__name__)
        self._current: dict[str, int] = {}
        self._closed = False

    @property
    def first(self) -> ResultSink:
        """The sink of segment 0 (the only one unless a stream changed world frame)."""
        return self.segments[0]

    def on_result(self, result: FrameResult) -> None:
        self.segments[self._current.get(result.stream_id, 0)].on_result(result)

    def on_segment(self, stream_id: str, segment: int, reason: str) -> None:
        while len(self.segments) <= segment:
            self.segments.append(self.factory(len(self.segments)))
        self._current[stream_id] = segment
        logger.info("stream %s: world segment %d (%s) goes to a new %s", stream_id, segment, reason, self.name)

    def close(self) -> None:
        """Close every segment's sink (each gets its chance; the first error is raised after)."""
        if not self._closed:
            self._closed = True
            SinkGroup(self.segments).close()


class SinkGroup:
    """Fans results out to several sinks and times each, so a run summary can say where time went.

    A sink that raises in `on_result` propagates (a broken output should stop a replay loudly); `close`
    closes every sink even if one fails, then re-raises the first error. The optional hooks (`on_segment`,
    `on_latency`) are passed on to the sinks that have them.
    """

    def __init__(self, sinks: Iterable[ResultSink] = ()) -> None:
        self.sinks: list[ResultSink] = list(sinks)
        self.time_s: dict[str, float] = {}
        self._closed = False

    def add(self, sink: ResultSink) -> None:
        self.sinks.append(sink)

    @staticmethod
    def _name(sink: ResultSink) -> str:
        return getattr(sink, "name", type(sink).__name__)

    def on_result(self, result: FrameResult) -> None:
        for sink in self.sinks:
            t0 = time.perf_counter()
            sink.on_result(result)
            name = self._name(sink)
            self.time_s[name] = self.time_s.get(name, 0.0) + time.perf_counter() - t0

    def on_results(self, results: Iterable[FrameResult]) -> None:
        for result in results:
            self.on_result(result)

    def on_segment(self, stream_id: str, segment: int, reason: str) -> None:
        for sink in self.sinks:
            call_hook(sink, "on_segment", stream_id, segment, reason)

    def on_latency(self, stream_id: str, seq: int, t_ns: int, latency_ms: float) -> None:
        for sink in self.sinks:
            call_hook(sink, "on_latency", stream_id, seq, t_ns, latency_ms)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        first: BaseException | None = None
        for sink in self.sinks:
            t0 = time.perf_counter()
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001 - every sink must get its chance to close
                logger.error("closing %s failed: %s", self._name(sink), e)
                first = first or e
            name = self._name(sink)
            self.time_s[name] = self.time_s.get(name, 0.0) + time.perf_counter() - t0
        if first is not None:
            raise first

    def __enter__(self) -> SinkGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
