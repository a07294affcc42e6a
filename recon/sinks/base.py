"""The sink interface: small objects that consume backend results, shared by `recon replay` and the nodes.

The per-frame flow everywhere is `source -> backend.step -> sinks`. A sink sees every `FrameResult` in
emission order (including late results from windowed backends and `is_update` revisions of a `seq` already
seen) and writes or draws it; `close()` finishes its output. Sinks never import rerun or zmq themselves
unless they live outside core (the Rerun logger lives in `recon.viewer`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from recon.types import FrameResult

logger = logging.getLogger(__name__)


@runtime_checkable
class ResultSink(Protocol):
    """Consumes results; `close` writes whatever is buffered and releases resources (idempotent)."""

    def on_result(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


class SinkGroup:
    """Fans results out to several sinks and times each, so a run summary can say where time went.

    A sink that raises in `on_result` propagates (a broken output should stop a replay loudly); `close`
    closes every sink even if one fails, then re-raises the first error.
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
