"""The viewer node: subscribes to a reconstruction node's results (SUB) and hands them to sinks.

Sinks are `recon.sinks.ResultSink`s (`on_result`, `close`): the Rerun logger from `recon.viewer`,
trajectory/PLY writers, or anything a caller passes in (`run_pipeline` uses this node to feed the
replay sinks). Results are deduplicated by (stream_id, epoch, seq) — a camera re-sends unacknowledged
frames after a node restart, so the same seq may be published twice — except `is_update` revisions,
which always pass. Malformed messages are counted, logged once per kind and dropped.
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
from recon.nodes.transport import Security, default_context, open_socket
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)


@dataclass
class ViewerStats:
    """Counters of one viewer node."""

    results: int = 0
    duplicates: int = 0
    updates: int = 0
    resets: int = 0
    heartbeats: int = 0
    metric: bool | None = None
    per_stream: dict[str, int] = field(default_factory=dict)


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
        self._seen: collections.OrderedDict[tuple[str, int, int], None] = collections.OrderedDict()
        self._window = dedupe_window
        self._stop = threading.Event()
        self._heard = threading.Event()
        self._byes: set[int] = set()
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

    def wait_bye(self, node_id: int | None = None, timeout: float = 10.0) -> bool:
        """Wait for a node's last heartbeat (`bye`), which it sends after its final results."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._byes if node_id is None else node_id in self._byes):
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(left)
        return True

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
        sock = open_socket(self.ctx, zmq.SUB, limits=self.limits, security=self.security, hwm=10000)
        sock.setsockopt(zmq.RCVHWM, 10000)
        sock.subscribe(P.TOPIC_RESULT)
        sock.subscribe(P.TOPIC_CONTROL)
        sock.connect(self.connect)
        last = time.monotonic()
        silent = False
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    # Heartbeats come every interval_s; five missed ones mean the publisher is gone (ZeroMQ
                    # reconnects by itself when it comes back).
                    if (self._heard.is_set() and not silent and not self._said_bye
                            and time.monotonic() - last > 5 * self._interval):
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
                        self._handle(P.decode(parts, self.limits))
                    except Exception as e:
                        self.rejects(P.fault_kind(e), "%s: rejected message: %s", self, e)
        finally:
            sock.close(0)

    def _handle(self, msg: P.Message) -> None:
        if msg.kind == P.HEARTBEAT:
            self.stats.heartbeats += 1
            self._interval = float(msg.header.get("interval_s", self._interval))
            self._said_bye = bool(msg.header.get("bye", False))  # a node that said bye is silent on purpose
            if msg.header.get("bye"):
                with self._cond:
                    self._byes.add(int(msg.header["node"]))
                    self._cond.notify_all()
            return
        if msg.kind == P.RESET:
            self.stats.resets += 1
            logger.info("%s: stream %s session reset (%s)", self, msg.stream_id, msg.header.get("reason", "?"))
            return
        if msg.kind != P.RESULT:
            return
        result = P.to_result(msg)
        # The epoch tells a restarted camera (new epoch, seq from 0 again: new frames) from a re-send.
        key = (result.stream_id, int(msg.header.get("epoch", 0)), result.seq)
        if result.is_update:
            self.stats.updates += 1
        elif self.dedupe:
            if key in self._seen:
                self.stats.duplicates += 1
                return
            self._seen[key] = None
            if len(self._seen) > self._window:
                self._seen.popitem(last=False)
        for sink in self.sinks:
            sink.on_result(result)
        with self._cond:
            self.stats.metric = result.metric if self.stats.metric is None else self.stats.metric and result.metric
            if not result.is_update:
                self.stats.results += 1
                self.stats.per_stream[result.stream_id] = self.stats.per_stream.get(result.stream_id, 0) + 1
            self._cond.notify_all()
