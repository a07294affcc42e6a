"""Messages from the reconstruction node back to one camera: credits (acks, window) and refusals.

The ROUTER socket belongs to the ingest thread. Other threads (sessions, control) hand their replies to it over a
private inproc PUSH socket, guarded by a lock; the ingest thread itself sends straight to the ROUTER. Either way a
reply never blocks its sender: when ZeroMQ's queue is full the reply is dropped, counted and logged once, and the
camera's re-send (recorded) or expiry (live) covers it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import zmq

from recon.nodes import protocol as P
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)


class Replies:
    """Builds credit and refusal messages and gets them to the ingest thread (thread-safe)."""

    def __init__(self, context: zmq.Context, endpoint: str, node_id: int, max_message_bytes: int) -> None:
        self.endpoint = endpoint
        self.node_id = node_id
        self.max_message_bytes = max_message_bytes
        self.lost = 0
        self.warn = WarnOnce(logger)
        self._push = context.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.setsockopt(zmq.SNDHWM, 100000)
        self._push_lock = threading.Lock()
        self._connected = False
        self._router: zmq.Socket | None = None
        self._io_thread: int | None = None

    def attach(self, router: zmq.Socket) -> None:
        """Called by the ingest thread: replies from it go straight to `router`."""
        self._router = router
        self._io_thread = threading.get_ident()

    def send(self, routing_id: bytes, parts: list[Any]) -> None:
        if threading.get_ident() == self._io_thread and self._router is not None:
            try:
                self._router.send_multipart([routing_id, *parts], zmq.NOBLOCK)
            except zmq.Again:
                self._dropped()
            return
        with self._push_lock:
            if not self._connected:
                self._push.connect(self.endpoint)
                self._connected = True
            try:
                self._push.send_multipart([routing_id, *parts], zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                self._dropped()

    def _dropped(self) -> None:
        self.lost += 1
        self.warn("reply_backlog", "a reply to a camera could not be queued; it will re-send or expire")

    def credit(self, routing_id: bytes, stream_id: str, epoch: int | None, *, window: int,
               acked: Iterable[int] = (), dropped: Iterable[int] = (), durable: int | None = None) -> None:
        """Acknowledge processed (`acked`) or dropped frames and grant `window`."""
        dropped = list(dropped)
        self.send(routing_id, P.encode_control(P.CREDIT, stream_id, t_ns=time.time_ns(), window=window,
                                               acked=list(acked), dropped=dropped or None, durable=durable,
                                               epoch=epoch, node=self.node_id,
                                               max_message_bytes=self.max_message_bytes))

    def refuse(self, routing_id: bytes, stream_id: str, epoch: int | None, *, reason: str, detail: str,
               seqs: Iterable[int] = (), retry_s: float = 0.0) -> None:
        """Tell a camera the node will not take `seqs` (or the whole stream when empty), and why."""
        self.send(routing_id, P.encode_control(P.REFUSE, stream_id, t_ns=time.time_ns(), reason=reason,
                                               detail=detail[:512], seqs=list(seqs), retry_s=float(retry_s),
                                               epoch=epoch, node=self.node_id))

    def close(self) -> None:
        with self._push_lock:
            self._push.close(0)
