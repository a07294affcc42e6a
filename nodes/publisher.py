"""The reconstruction node's publishing side: one XPUB socket for results, control messages and heartbeats.

Session threads publish their own results directly (no hand-off to a publish thread on the hot path): the socket
is guarded by a lock, which is the full memory barrier ZeroMQ asks for when a socket is used by several threads.
XPUB (a PUB that reports subscriptions) lets the node count result subscribers, so a recorded replay can wait for
its recorder before granting credit.

Nothing is dropped silently: the socket runs with XPUB_NODROP, so when a subscriber's queue (`hwm` messages) is
full, publishing waits instead of discarding, and the wait is logged and counted (`publish_waits`). ZeroMQ
heartbeats on the socket drop a subscriber that stopped answering, so a dead one cannot stall the node forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from recon.nodes import protocol as P
from recon.nodes.transport import Security, open_socket, readable, send_parts
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)


class Publisher:
    """Results, control messages and heartbeats out on `endpoint`; every method is thread-safe."""

    def __init__(self, context: zmq.Context, endpoint: str, *, node_id: int, heartbeat_s: float,
                 limits: P.Limits, security: Security, hwm: int = 64, min_subscribers: int = 0) -> None:
        self.endpoint = endpoint
        self.node_id = node_id
        self.heartbeat_s = heartbeat_s
        self.min_subscribers = min_subscribers
        self.subscribers = 0
        self.results_out = 0
        self.unheard = 0  # results published while no subscriber listened (counted, not silent)
        self.publish_waits = 0
        self.warn = WarnOnce(logger)
        self._lock = threading.Lock()
        self._next_beat = 0.0
        sock = open_socket(context, zmq.XPUB, limits=limits, security=security, server=True, hwm=hwm)
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        self._sock: zmq.Socket | None = sock

    def bind(self) -> None:
        assert self._sock is not None
        self._sock.bind(self.endpoint)

    def _send(self, parts: list[Any], *, track: bool = False, wait: bool = True,
              abort: Callable[[], bool] | None = None) -> zmq.MessageTracker | None | bool:
        """Send one multipart; with `wait`, wait (counted, logged) while a subscriber's queue is full."""
        started = None
        while True:
            with self._lock:
                if self._sock is None:
                    return False
                try:
                    tracker = send_parts(self._sock, parts, copy=False, track=track)
                    return tracker if track else True
                except zmq.Again:
                    if not wait:
                        return False
            now = time.monotonic()
            if started is None:
                started = now
                self.publish_waits += 1
            elif now - started > 2.0:
                self.warn("slow_subscriber", "%s: a result subscriber is not keeping up; publishing waits for it "
                          "(nothing is dropped)", self.endpoint)
            if abort is not None and abort():
                return False
            time.sleep(0.001)

    def publish(self, parts: list[Any], *, track: bool = False, abort: Callable[[], bool] | None = None,
                wait: bool = True) -> zmq.MessageTracker | None | bool:
        """One encoded result; returns its tracker with `track` (the checkpoint writer waits on it). `wait=False`:
        False at once instead of waiting while a subscriber's queue is full (nothing sent, nothing counted)."""
        sent = self._send(parts, track=track, abort=abort, wait=wait)
        if sent is not False:
            self.results_out += 1
            if self.subscribers == 0:
                self.unheard += 1
        return sent

    def control(self, kind: str, stream_id: str = "", **fields: Any) -> None:
        self._send(P.encode_control(kind, stream_id, t_ns=time.time_ns(), **fields), wait=False)

    def heartbeat(self, *, bye: bool = False, lost: int = 0) -> None:
        """Send a heartbeat when one is due (always with `bye`: the node's last word after its last result, with
        its totals: results published and results lost)."""
        now = time.monotonic()
        if not bye and now < self._next_beat:
            return
        self._next_beat = now + self.heartbeat_s
        totals = {"bye": True, "results": self.results_out, "lost": lost} if bye else {}
        parts = P.encode_control(P.HEARTBEAT, t_ns=time.time_ns(), node=self.node_id, interval_s=self.heartbeat_s,
                                 role="recon", **totals)
        if bye:
            deadline = time.monotonic() + 5.0
            self._send(parts, abort=lambda: time.monotonic() > deadline)
        else:
            self._send(parts, wait=False)

    def poll_subscribers(self) -> int:
        """Read subscription events (XPUB); returns the number of result subscribers."""
        with self._lock:
            if self._sock is None:
                return self.subscribers
            while readable(self._sock):
                event = self._sock.recv(zmq.NOBLOCK)
                if event[1:].startswith(P.TOPIC_RESULT[:-1]) or event[1:] == b"":
                    before = self.subscribers
                    self.subscribers = max(0, before + (1 if event[:1] == b"\x01" else -1))
                    if before < self.min_subscribers <= self.subscribers:
                        logger.info("%s: %d result subscriber(s) present, accepting frames", self.endpoint,
                                    self.subscribers)
            return self.subscribers

    @property
    def accepting(self) -> bool:
        """Enough subscribers listen for frames to be worth processing (`min_subscribers`)."""
        return self.subscribers >= self.min_subscribers

    def close(self, linger_s: float = 2.0) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close(linger=int(linger_s * 1000))  # let the final results reach connected subscribers
                self._sock = None
