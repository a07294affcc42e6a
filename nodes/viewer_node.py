"""The viewer node: subscribes to a reconstruction node's results (SUB) and hands them to sinks.

Sinks are `recon.sinks.ResultSink`s (`on_result`, `close`): the Rerun logger from `recon.viewer`,
trajectory/PLY writers, or anything a caller passes in (`run_pipeline` uses this node to feed the
replay sinks). Results are deduplicated by (stream_id, epoch, seq) — a camera re-sends unacknowledged
frames after a node restart, so the same seq may be published twice — except `is_update` revisions,
which always pass. Malformed messages are counted, logged once per kind and dropped.

World segments: every result names the world frame it is in (`map_epoch`). When a stream's changes (a reset,
or a restarted node that could not restore its session, which also says so with a `reset` message), the sinks
get `on_segment(stream_id, k, reason)` before the first result of the new world frame, so they start a new
segment (`recon.sinks.SegmentedSink`: a new file) instead of mixing two world frames.

A sink that raises is logged (once per sink) and counted in `stats.sink_errors`; the other sinks still get the
result. Latency: `stats.latency` holds, per stream, the node's capture-to-publish and this node's
capture-to-receive latency over a sliding window; each result's node-side figure goes to `on_latency`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq

from recon.nodes import protocol as P
from recon.nodes.latency import LatencyWindow
from recon.nodes.transport import Security, default_context, open_socket
from recon.sinks.base import call_hook
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)


MIN_SILENCE_S = 3.0
"""A publisher is reported silent after max(5 heartbeat intervals, this): a busy 2-core machine delays heartbeats."""


@dataclass
class ViewerStats:
    """Counters of one viewer node.

    Attributes:
        results: distinct results handed to the sinks (per stream in `per_stream`).
        duplicates / updates / resets / heartbeats: what else arrived.
        sink_errors: per sink name, results that sink failed on (the other sinks still got them).
        segments: per stream, world segments seen beyond the first.
        latency: per stream, `{"publish": {...}, "receive": {...}}` latency summaries in ms (see LatencyWindow).
    """

    results: int = 0
    duplicates: int = 0
    updates: int = 0
    resets: int = 0
    heartbeats: int = 0
    metric: bool | None = None
    per_stream: dict[str, int] = field(default_factory=dict)
    sink_errors: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    latency: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


class ViewerNode:
    """Receives results on a SUB socket in its own thread and feeds `sinks` (closed by `stop`)."""

    def __init__(self, connect: str, sinks: Iterable[Any] = (), *, context: zmq.Context | None = None,
                 security: Security | None = None, limits: P.Limits = P.DEFAULT_LIMITS, dedupe: bool = True,
                 dedupe_window: int = 1 << 16, close_sinks: bool = True) -> None:
        self.connect = connect
        self.sinks = list(sinks)
        self.ctx = context or default_context()
        self.security = security
        self.limits = limits
        self.dedupe = dedupe
        self.close_sinks = close_sinks
        self.stats = ViewerStats()
        self.rejects = WarnOnce(logger)
        self.sink_warnings = WarnOnce(logger)
        self._worlds: dict[str, int] = {}  # stream -> map_epoch of its current segment
        self._latency: dict[str, tuple[LatencyWindow, LatencyWindow]] = {}
        self._seen: collections.OrderedDict[tuple[str, int, int], None] = collections.OrderedDict()
        self._window = dedupe_window
        self._stop = threading.Event()
        self._heard = threading.Event()
        self._byes: set[int] = set()
        self.node_totals: dict[int, tuple[int, int]] = {}  # node id -> (results published, results lost), from bye
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._interval = 1.0
        self._said_bye = False

    def __str__(self) -> str:
        return f"ViewerNode({self.connect})"

    def start(self) -> ViewerNode:
        self._thread = threading.Thread(target=self._run_guarded, name="viewer-node", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        """True once anything (a heartbeat at least) arrived from the publisher: the subscription is live."""
        return self._heard.wait(timeout)

    def wait_bye(self, node_id: int | None = None, timeout: float | None = 10.0,
                 abort: threading.Event | None = None) -> bool:
        """Wait for a node's last heartbeat (`bye`), which it sends after its final results (None: no time limit;
        `abort` ends the wait early)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (self._byes if node_id is None else node_id in self._byes):
                left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if left <= 0 or self._stop.is_set() or (abort is not None and abort.is_set()):
                    return False
                self._cond.wait(left)
        return True

    def received(self) -> int:
        """Result messages handed over by the publisher: distinct results, duplicates and updates."""
        return self.stats.results + self.stats.duplicates + self.stats.updates

    def lost_from(self, node_id: int) -> int | None:
        """Results node `node_id` lost (its own count at stop) plus those that did not arrive here; None before
        its bye."""
        totals = self.node_totals.get(node_id)
        if totals is None:
            return None
        published, lost = totals
        return lost + max(0, published - self.received())

    def wait_results(self, count: int, timeout: float) -> bool:
        """Wait until `count` distinct results have been handed to the sinks."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.stats.results < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving and close the sinks (unless the caller keeps them: `close_sinks=False`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.stats.latency = self.latency()
        for sink in self.sinks if self.close_sinks else ():
            try:
                sink.close()
            except Exception as e:
                logger.error("%s: closing sink %s failed: %s", self, type(sink).__name__, e)
                self.error = self.error or e
        self.sinks = []

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as e:
            self.error = e
            logger.exception("%s failed", self)
            self._stop.set()
            with self._cond:
                self._cond.notify_all()

    def run(self) -> None:
        """Receive until stop(); blocking (the CLI runs it in the main thread)."""
        sock = open_socket(self.ctx, zmq.SUB, limits=self.limits, security=self.security, hwm=256)
        sock.subscribe(P.TOPIC_RESULT)
        sock.subscribe(P.TOPIC_CONTROL)
        for endpoint in self.connect.split(","):  # several nodes (the workers of `recon serve --ray`)
            sock.connect(endpoint)
        last = time.monotonic()
        silent = False
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    # Heartbeats come every interval_s; five missed ones, and at least MIN_SILENCE_S, mean the
                    # publisher is gone (ZeroMQ reconnects by itself when it comes back).
                    if (self._heard.is_set() and not silent and not self._said_bye
                            and time.monotonic() - last > max(5 * self._interval, MIN_SILENCE_S)):
                        silent = True
                        logger.warning("%s: no heartbeat for %.1f s; waiting for the node to come back", self,
                                       time.monotonic() - last)
                    continue
                last = time.monotonic()
                if silent:
                    silent = False
                    logger.info("%s: the node is back", self)
                for _ in range(1000):
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._heard.set()
                    try:
                        msg = P.decode(parts, self.limits)
                        result = P.to_result(msg) if msg.kind == P.RESULT else None
                    except Exception as e:
                        self.rejects(P.fault_kind(e), "%s: rejected message: %s", self, e)
                        continue
                    self._handle(msg, result)
        finally:
            sock.close(0)

    def _handle(self, msg: P.Message, result: Any) -> None:
        if msg.kind == P.HEARTBEAT:
            self.stats.heartbeats += 1
            self._interval = float(msg.header.get("interval_s", self._interval))
            self._said_bye = bool(msg.header.get("bye", False))  # a node that said bye is silent on purpose
            if msg.header.get("bye"):
                with self._cond:
                    node = int(msg.header["node"])
                    self._byes.add(node)
                    self.node_totals[node] = (int(msg.header.get("results", 0)), int(msg.header.get("lost", 0)))
                    self._cond.notify_all()
            return
        if msg.kind == P.RESET:
            self.stats.resets += 1
            reason = str(msg.header.get("reason", "?"))
            logger.info("%s: stream %s session reset (%s)", self, msg.stream_id, reason)
            if "map_epoch" in msg.header:
                self._world(msg.stream_id, int(msg.header["map_epoch"]), reason)
            return
        if result is None:
            return
        h = msg.header
        # The epoch tells a restarted camera (new epoch, seq from 0 again: new frames) from a re-send.
        key = (result.stream_id, int(h.get("epoch", 0)), result.seq)
        if result.is_update:
            self.stats.updates += 1
        elif self.dedupe:
            if key in self._seen:
                self.stats.duplicates += 1
                return
            self._seen[key] = None
            if len(self._seen) > self._window:
                self._seen.popitem(last=False)
        if "map_epoch" in h:
            self._world(result.stream_id, int(h["map_epoch"]), "new world frame")
        node_ms = None
        if not result.is_update and "capture_ns" in h:
            publish, receive = self._latency_of(result.stream_id)
            receive.add_since(int(h["capture_ns"]))
            if "publish_ns" in h:
                node_ms = (int(h["publish_ns"]) - int(h["capture_ns"])) / 1e6
                publish.add(node_ms)
        for sink in self.sinks:
            self._deliver(sink, "on_result", result)
            if node_ms is not None:
                self._deliver(sink, "on_latency", result.stream_id, result.seq, result.t_ns, node_ms)
        with self._cond:
            self.stats.metric = result.metric if self.stats.metric is None else self.stats.metric and result.metric
            if not result.is_update:
                self.stats.results += 1
                self.stats.per_stream[result.stream_id] = self.stats.per_stream.get(result.stream_id, 0) + 1
            self._cond.notify_all()

    def _deliver(self, sink: Any, hook: str, *args: Any) -> None:
        """One sink's hook; a failure is a sink error (logged once per sink, counted), never a lost message."""
        try:
            call_hook(sink, hook, *args)
        except Exception as e:
            name = str(getattr(sink, "name", type(sink).__name__))
            self.stats.sink_errors[name] = self.stats.sink_errors.get(name, 0) + 1
            self.sink_warnings(f"sink_{name}", "%s: sink %s failed in %s: %s: %s", self, name, hook,
                               type(e).__name__, e)
            logger.debug("%s: sink %s traceback", self, name, exc_info=True)

    def _world(self, stream_id: str, map_epoch: int, reason: str) -> None:
        """Follow the stream's world frame; a change starts a new segment in every sink."""
        current = self._worlds.get(stream_id)
        self._worlds[stream_id] = map_epoch
        if current is None or current == map_epoch:
            return
        segment = self.stats.segments.get(stream_id, 0) + 1
        self.stats.segments[stream_id] = segment
        logger.warning("%s: stream %s is in a new world frame (%s): outputs start segment %d", self, stream_id,
                       reason, segment)
        for sink in self.sinks:
            self._deliver(sink, "on_segment", stream_id, segment, reason)

    def _latency_of(self, stream_id: str) -> tuple[LatencyWindow, LatencyWindow]:
        pair = self._latency.get(stream_id)
        if pair is None:
            pair = self._latency[stream_id] = (LatencyWindow(), LatencyWindow())
        return pair

    def latency(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per stream: `publish` (capture to the node publishing) and `receive` (capture to this node) in ms."""
        return {sid: {"publish": p.summary(), "receive": r.summary()} for sid, (p, r) in self._latency.items()}
