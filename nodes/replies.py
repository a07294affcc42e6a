"""Messages from the reconstruction node back to one camera: credits (acks, window) and refusals.

The ROUTER socket cameras talk to is shared: the ingest thread receives on it, and whichever thread has a reply
(a session acknowledging the frame it just published, the ingest thread refusing a frame, the control thread)
sends it straight onto it, so an acknowledgement costs no hand-off to another thread. ZeroMQ sockets are not
thread-safe, but one may be used by several threads with a full memory barrier between them: every use of the
ROUTER happens under `lock`, and the ingest thread never blocks while holding it. It waits on the socket's
ZMQ_FD instead (an OS-level poll that does not touch the socket; see `wait`).

ZMQ_FD is edge-triggered: any thread that uses the socket may consume the signal that input arrived. So a thread
that sent a reply while the ingest thread was waiting checks, still under the lock, whether input is waiting and
if so wakes the ingest thread through a pipe; the ingest thread checks for input under the lock before it waits.
No input is ever left unnoticed, and the pipe is written only in that race, not once per reply.

A reply never blocks its sender: when ZeroMQ's queue is full the reply is dropped, counted and logged once, and
the camera's re-send (recorded) or expiry (live) covers it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import zmq

from recon.nodes import protocol as P
from recon.nodes.transport import readable, recv_parts, send_parts
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)


class Replies:
    """Builds credit and refusal messages and sends them on the shared ROUTER (thread-safe)."""

    def __init__(self, node_id: int, max_message_bytes: int) -> None:
        self.node_id = node_id
        self.max_message_bytes = max_message_bytes
        self.lost = 0
        self.warn = WarnOnce(logger)
        self.lock = threading.Lock()
        self._router: zmq.Socket | None = None
        self._early: collections.deque[list[Any]] = collections.deque(maxlen=4096)  # before the ROUTER is attached
        self._detached = False
        self._waiting = False  # the ingest thread is (about to be) blocked in `wait`
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @property
    def wake_fd(self) -> int:
        """Readable when a sender saw input the ingest thread may have missed (register it in its poller)."""
        return self._wake_r

    def attach(self, router: zmq.Socket) -> None:
        """Called by the ingest thread before it serves: replies go onto `router` from now on."""
        with self.lock:
            self._router = router
            early, self._early = list(self._early), collections.deque(maxlen=4096)
        for parts in early:
            self._send(parts)

    def detach(self) -> zmq.Socket | None:
        """Called by the ingest thread when it stops: later replies are counted as lost."""
        with self.lock:
            router, self._router = self._router, None
            self._detached = True
        return router

    def wait(self, poller: zmq.Poller, timeout_ms: int) -> None:
        """Block (ingest thread) until input may be waiting on the ROUTER, a sender woke us, or `timeout_ms`.

        `poller` holds the ROUTER's ZMQ_FD and `wake_fd`, never the socket itself, so nothing touches the socket
        while other threads send on it."""
        with self.lock:
            if self._router is None or readable(self._router):
                return
            self._waiting = True
        try:
            events = poller.poll(timeout_ms)
        finally:
            with self.lock:
                self._waiting = False
        if any(fd == self._wake_r for fd, _ in events):
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass

    def wake(self) -> None:
        """Make the ingest thread's `wait` return now."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def receive(self, limit: int = 16) -> list[list[Any]]:
        """The multiparts waiting on the ROUTER, at most `limit` (zero-copy frames; ingest thread): one lock
        acquisition for a burst of frames, not one per frame."""
        got: list[list[Any]] = []
        with self.lock:
            router = self._router
            if router is None:
                return got
            while len(got) < limit and readable(router):
                got.append(recv_parts(router))
        return got

    def send(self, routing_id: bytes, parts: list[Any]) -> None:
        self._send([routing_id, *parts])

    def _send(self, parts: list[Any]) -> None:
        with self.lock:
            router = self._router
            if router is None:
                if self._detached or len(self._early) == self._early.maxlen:
                    self._dropped()
                else:
                    self._early.append(parts)
                return
            try:
                send_parts(router, parts)
            except (zmq.Again, zmq.ZMQError):
                self._dropped()
            if self._waiting and readable(router):
                with contextlib.suppress(BlockingIOError):  # a full pipe holds wake-ups already
                    os.write(self._wake_w, b"\0")

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
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
