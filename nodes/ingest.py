"""The reconstruction node's ingest: the ROUTER socket cameras talk to, and the thread that owns it.

For every message the ingest thread validates the header and every declared size against the limits (and, for a
compressed image, the size its own header states) before anything is allocated, asks the session table whether
the sender may use the stream and whether the frame fits the queue and the memory budget, and answers the camera:
a credit for a duplicate or a dropped live frame, a refusal (with its reason) for a frame or a stream the node will
not take. Decompression and everything after it happens on the stream's session thread, so this thread never
waits for a model, a decoder or a backend being built; except for a session whose frames have been taking under
`sessions.INLINE_MAX_S` each (a raw frame into a trivial backend), which this thread processes itself, because
handing such a frame to another thread costs more than processing it. Sessions send their acknowledgements onto
the ROUTER themselves (`Replies`: the socket is shared under a lock, so an ack is no hand-off to this thread). It
also sends the publisher's heartbeats and closes idle sessions.

Acknowledgements of recorded frames processed here are coalesced (`ACK_DELAY_S`): a credit goes out once half the
stream's window is processed, or `ACK_DELAY_S` after the first frame it acknowledges, whichever comes first. Each
credit costs both sides a message and the node a wake-up of libzmq's I/O thread (a context switch on a 2-core
machine); a pipelined camera still holds half its window in credit, so it never waits for one. Live frames are
acknowledged at once: their camera sends its next frame only then.

A malformed message is counted by kind, logged once per kind and dropped; when its header names a frame, the
camera is told (a refusal naming the fault), so it does not re-send it forever.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import zmq

from recon.errors import ProtocolError
from recon.nodes import protocol as P
from recon.nodes.admission import Peer
from recon.nodes.publisher import Publisher
from recon.nodes.replies import Replies
from recon.nodes.sessions import Offer, SessionTable
from recon.nodes.transport import Security, open_socket
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)

SUBSCRIBER_POLL_S = 0.005
"""How often the ingest thread reads the publisher's subscription events."""

RECEIVE_BATCH = 16
"""Messages taken off the ROUTER under one acquisition of its lock (`Replies.receive`)."""

ACK_DELAY_S = 0.002
"""Longest the acknowledgement of a recorded frame processed on the ingest thread waits to share its credit with
later frames' (see the module docstring). Below the ~5 ms a pipelined window of 8 lasts at the camera rates that
keep this thread busy, so credit never runs out for it; a few ms is nothing to a recorded source."""


class Ingest:
    """Owns the ROUTER socket; `run` is the ingest thread's loop (until `finish`)."""

    def __init__(self, context: zmq.Context, endpoint: str, *, table: SessionTable, replies: Replies,
                 publisher: Publisher, limits: P.Limits, security: Security, rejects: WarnOnce,
                 hwm: int = 256) -> None:
        self.endpoint = endpoint
        self.table = table
        self.replies = replies
        self.publisher = publisher
        self.limits = limits
        self.rejects = rejects
        self.messages_in = 0
        self._peers: collections.OrderedDict[bytes, Peer] = collections.OrderedDict()
        self._deferred: dict[int, Any] = {}  # sessions holding acknowledgements of inline frames (ACK_DELAY_S)
        self._flush_at = 0.0
        self._finish = threading.Event()
        self._sock = open_socket(context, zmq.ROUTER, limits=limits, security=security, server=True, hwm=hwm)
        # A reply that cannot be queued (the camera's queue is full, or it is gone) fails instead of vanishing, so
        # `Replies` counts it.
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.SNDHWM, 1000)

    def bind(self) -> None:
        self._sock.bind(self.endpoint)

    def finish(self) -> None:
        """End the loop (the node calls it once every session is done and has sent its last acknowledgements)."""
        self._finish.set()
        self.replies.wake()

    # -- loop -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        # The socket's ZMQ_FD, not the socket: polling it touches nothing other threads may be using (`Replies`).
        poller = zmq.Poller()
        poller.register(self._sock.getsockopt(zmq.FD), zmq.POLLIN)
        self.replies.attach(self._sock)
        poller.register(self.replies.wake_fd, zmq.POLLIN)
        timeout = max(1, min(100, int(1000 * self.publisher.heartbeat_s)))
        now = time.monotonic()
        next_sweep = now + 1.0
        next_subscribers = now
        try:
            while not self._finish.is_set():
                if self._receive():
                    wait = timeout
                    if self._deferred:
                        wait = max(0, min(timeout, int(1000 * (self._flush_at - time.monotonic()) + 1)))
                    if wait:
                        self.replies.wait(poller, wait)
                now = time.monotonic()
                if self._deferred and now >= self._flush_at:
                    self._flush_acks()
                if now >= next_subscribers:
                    # Subscription events are not per frame: reading them at most every few ms saves a lock and a
                    # socket query per message (a subscriber still counts within SUBSCRIBER_POLL_S of connecting).
                    next_subscribers = now + SUBSCRIBER_POLL_S
                    self.publisher.poll_subscribers()
                self.publisher.heartbeat()
                if now >= next_sweep:
                    next_sweep = now + 1.0
                    self.table.sweep()
            self.publisher.poll_subscribers()
        finally:
            self._flush_acks()
            sock = self.replies.detach()
            (sock or self._sock).close(linger=500)  # queued acknowledgements still reach their cameras

    def _receive(self) -> bool:
        """Handle the messages waiting now (at most 256); True when the socket was found empty (time to wait).

        After a batch that emptied the socket, the wait looks again (under the lock, as it must: `Replies.wait`)
        rather than a second look here. Each look is a ZMQ_EVENTS query: a poll(2), and after the I/O thread queued
        a message, the command processing that goes with it."""
        count = 0
        while count < 256:
            batch = self.replies.receive(RECEIVE_BATCH)
            count += len(batch)
            for parts in batch:
                self._one(parts[0].bytes, parts)
            if len(batch) < RECEIVE_BATCH:
                return True
        return False

    def _flush_acks(self) -> None:
        """Send the acknowledgements inline frames left waiting (ACK_DELAY_S)."""
        deferred, self._deferred = self._deferred, {}
        for session in deferred.values():
            session.flush_acks()

    def _one(self, routing_id: bytes, parts: list[Any]) -> None:
        try:
            peer = self._peers.get(routing_id)
            if peer is None:
                peer = self._peer(routing_id, parts[1] if len(parts) > 1 else parts[0])
            self._handle(peer, parts[1:])
        except ProtocolError as e:
            self.rejects(P.fault_kind(e), "rejected message: %s", e)
        except Exception as e:  # never let one message kill the ingest thread
            self.rejects("internal_" + type(e).__name__, "error handling a message: %s", e)
            logger.debug("ingest traceback", exc_info=True)
        finally:
            # Counted once its outcome is: a status reply never shows a message whose rejection is not counted.
            self.messages_in += 1

    def _peer(self, routing_id: bytes, frame: Any) -> Peer:
        peer = self._peers.get(routing_id)
        if peer is None:
            peer = self._peers[routing_id] = Peer.from_frame(routing_id, frame)
            while len(self._peers) > 4096:
                self._peers.popitem(last=False)
        return peer

    # -- one message ------------------------------------------------------------------------------------------
    def _handle(self, peer: Peer, parts: list[Any]) -> None:
        try:
            msg = P.decode(parts, self.limits, images=False)
        except ProtocolError as e:
            self._refuse_malformed(peer, parts, e)
            raise
        kind, h = msg.kind, msg.header
        if kind == P.FRAME:
            session, offer = self.table.offer(peer, msg)
            self._answer(peer, msg, offer, session)
            if offer.item is not None:  # a fast session's frame: processed here, no hand-off (INLINE_MAX_S)
                defer = not offer.item.live
                if defer and not self._deferred:
                    self._flush_at = time.monotonic() + ACK_DELAY_S
                if defer:
                    self._deferred[id(session)] = session
                session.process_inline(offer.item, defer_ack=defer)
                if defer and not session.holds_acks():
                    # It sent its credit itself (half a window): the delay of its next credit starts with that
                    # credit's first frame, not with this one's.
                    self._deferred.pop(id(session), None)
        elif kind == P.HEARTBEAT:
            # Answered with a credit: it carries the window, the node's id and its limits, so a camera learns all
            # three at connect time and notices a restarted node by its new id.
            epoch = int(h.get("epoch", h["node"]))
            session = self.table.heard(peer, msg.stream_id, epoch, h.get("live"))
            window, session = self.table.window_for(msg.stream_id, bool(h.get("live", False))) if session is None \
                else (session.window(), session)
            durable = session.durable_seq(epoch) if session is not None else None
            self.replies.credit(peer.routing_id, msg.stream_id, epoch, window=window, durable=durable)
        elif kind == P.RESET:
            refusal = self.table.reset_from(peer, msg.stream_id, h.get("epoch"))
            if refusal is not None:
                self.replies.refuse(peer.routing_id, msg.stream_id, h.get("epoch"), reason=refusal.reason,
                                    detail=refusal.detail, retry_s=0.0)
        else:
            raise P._err("wrong_direction", f"{kind} is not accepted by the reconstruction node")

    def _answer(self, peer: Peer, msg: P.Message, offer: Offer, session: Any) -> None:
        stream_id, seq, epoch = msg.stream_id, msg.seq, int(msg.header.get("epoch", 0))
        window = session.window() if session is not None else 0
        if offer.replaced is not None:
            old = offer.replaced
            self.replies.credit(old.peer.routing_id, stream_id, old.epoch, window=window, dropped=[old.seq])
        if offer.status == "duplicate":
            durable = session.durable_seq(epoch) if session is not None else None
            self.replies.credit(peer.routing_id, stream_id, epoch, window=window, acked=[seq], durable=durable)
        elif offer.status == "dropped":
            self.replies.credit(peer.routing_id, stream_id, epoch, window=window, dropped=[seq])
        elif offer.status == "refused":
            self.replies.refuse(peer.routing_id, stream_id, epoch, reason=offer.reason, detail=offer.detail,
                                seqs=[] if offer.whole_stream else [seq], retry_s=offer.retry_s)

    def _refuse_malformed(self, peer: Peer, parts: list[Any], error: ProtocolError) -> None:
        """Tell the sender of a malformed frame which frame and why, when its header says that much."""
        named = P.peek_frame(parts[1], self.limits) if len(parts) >= 2 else None
        if named is None:
            return
        stream_id, seq, epoch = named
        self.replies.refuse(peer.routing_id, stream_id, epoch, reason=P.fault_kind(error), detail=str(error),
                            seqs=[seq], retry_s=0.0)
