"""The reconstruction node: frames in (ROUTER), one backend session per stream, results out (PUB).

Threads, so the model never waits on I/O (DESIGN.md §1, §6):

    io thread       ROUTER <- cameras (frames, heartbeats, resets); sends credits/acks back to cameras
    decode thread   validates and decodes (JPEG/PNG included), dedupes by (stream_id, epoch, seq), queues
    session threads one per stream: backend.step() over a bounded queue (latest-wins for live frames)
    publish thread  encodes results, PUB -> subscribers, then acknowledges the frame to its camera
    control thread  REP: status, reset-stream, shutdown

Flow control: the node grants each camera a window of `queue_size` frames; a frame is acknowledged
after its results were published, so a recorded source never has more in flight than the queue holds
and, after a node restart, re-sends exactly what was not published. A malformed message is counted,
logged once per kind, and dropped; the node keeps serving.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from recon.backends import create_backend, registered
from recon.backends.base import Backend
from recon.backends.identity import ensure_registered
from recon.errors import ConfigError, ProtocolError, ReconError
from recon.nodes import protocol as P
from recon.nodes.transport import Authenticator, Security, check_bind, default_context, new_node_id, open_socket
from recon.types import Frame, FrameResult
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)

_ACKS = "inproc://recon-node-acks-{}"


def derive_control(bind: str) -> str:
    """Default control endpoint: bind port + 2 for tcp, a sibling name for inproc/ipc."""
    if bind.startswith("tcp://"):
        host, port = bind.rsplit(":", 1)
        return f"{host}:{int(port) + 2}"
    return bind + "-control"


@dataclass
class ReconNodeConfig:
    """Options of the reconstruction node.

    Attributes:
        bind: ROUTER endpoint cameras connect to.
        publish: PUB endpoint results go out on.
        control: REP endpoint for status/reset/shutdown (default: derived from `bind`).
        backend: registry name; `backend_options` are passed to create_backend.
        queue_size: bounded frames per stream, and the credit window granted to cameras.
        heartbeat_s: heartbeat period on the PUB socket.
        points_dtype, stride, with_image: how results are encoded (see protocol.encode_result).
        max_streams: sessions beyond this are refused (bounded memory).
        session_idle_s: a session without frames for this long is flushed and closed, freeing its slot.
        min_subscribers: grant cameras no credit until this many result subscribers are connected (a recorded
            replay waits for its recorder instead of publishing into the void).
        allow_remote: permit non-loopback binds.
        backend_instance: an already built backend for the first stream (in-process replay hands over its own,
            so its stats stay with the caller); further streams are refused.
        strict: a backend exception stops the node (`ReconNode.failure`) instead of being counted and skipped.
        frame_hook: called with each decoded frame (in-process runs use it to re-attach `Frame.meta`, which is
            not part of the wire format).
    """

    bind: str = "tcp://127.0.0.1:5555"
    publish: str = "tcp://127.0.0.1:5556"
    control: str | None = None
    backend: str = "geometric"
    backend_options: dict[str, Any] = field(default_factory=dict)
    queue_size: int = 8
    heartbeat_s: float = 1.0
    points_dtype: str = "f4"
    stride: int = 1
    with_image: bool = True
    max_streams: int = 16
    min_subscribers: int = 0
    session_idle_s: float = 600.0
    allow_remote: bool = False
    limits: P.Limits = P.DEFAULT_LIMITS
    security: Security = field(default_factory=Security)
    backend_instance: Backend | None = None
    strict: bool = False
    frame_hook: Callable[[Frame], None] | None = None

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ConfigError(f"queue_size must be >= 1, got {self.queue_size}")
        if self.points_dtype not in ("f2", "f4"):
            raise ConfigError(f"points_dtype must be f2 or f4, got {self.points_dtype!r}")
        if self.control is None:
            self.control = derive_control(self.bind)


@dataclass
class _Item:
    frame: Frame
    peer: bytes
    epoch: int


class Session:
    """One stream's backend, bounded queue and counters, served by its own thread."""

    def __init__(self, node: ReconNode, stream_id: str) -> None:
        self.node = node
        self.stream_id = stream_id
        given = node.config.backend_instance
        if given is not None:
            if node.sessions:
                raise ConfigError(f"stream {stream_id}: this node serves one stream with the backend it was given")
            self.backend = given
        else:
            self.backend = create_backend(node.config.backend, **node.config.backend_options)
        self.number = 0
        self.queue: collections.deque[_Item] = collections.deque()
        self.cond = threading.Condition()
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.drops = 0
        self.errors = 0
        self.fps = 0.0
        self.step_ms = 0.0
        self.step_s_total = 0.0
        self.last_t = 0.0
        self.reset_requested = False
        self.closing = False
        self.last_frame_at = time.monotonic()
        self.epoch: int | None = None
        self.done: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.queued: set[int] = set()
        self.thread = threading.Thread(target=self._run, name=f"session-{stream_id}", daemon=True)
        self.thread.start()

    # -- called from the decode thread ---------------------------------------------------------------
    def offer(self, item: _Item, live: bool) -> str:
        """Queue a frame; returns 'queued', 'duplicate' (already published: re-ack) or 'inflight'."""
        seq = item.frame.seq
        with self.cond:
            if self.epoch != item.epoch:
                # A restarted camera: forget the old epoch's seqs, keep the backend (the session continues).
                self.epoch, self.done, self.queued = item.epoch, collections.OrderedDict(), set()
            if seq in self.done:
                return "duplicate"
            if seq in self.queued:
                return "inflight"
            if len(self.queue) >= self.node.config.queue_size:
                # A credit-respecting camera never gets here. Live: latest wins, the old frame is acked
                # as dropped. Recorded: the new frame is refused unacked, so its camera re-sends it later.
                self.drops += 1
                if not live:
                    self.node.warn("queue_overflow", "stream %s: queue full, refused recorded seq %d",
                                   self.stream_id, seq)
                    return "refused"
                old = self.queue.popleft()
                self.queued.discard(old.frame.seq)
                self.node.warn("queue_overflow_live", "stream %s: queue full, dropped live seq %d",
                               self.stream_id, old.frame.seq)
                self.node.ack_later(old.peer, self.stream_id, old.epoch, [old.frame.seq])
            self.queue.append(item)
            self.queued.add(seq)
            self.last_frame_at = time.monotonic()
            self.cond.notify()
        return "queued"

    def close_if_idle(self, idle_s: float) -> bool:
        """Start closing (flush, then the thread ends) when no frame came for `idle_s`; True if it did."""
        with self.cond:
            if self.queue or time.monotonic() - self.last_frame_at < idle_s:
                return False
            self.closing = True
            self.cond.notify()
        return True

    def request_reset(self) -> None:
        with self.cond:
            self.reset_requested = True
            self.cond.notify()

    def mark_done(self, epoch: int, seq: int) -> None:
        with self.cond:
            if epoch == self.epoch:
                self.queued.discard(seq)
                self.done[seq] = None
                while len(self.done) > 65536:
                    self.done.popitem(last=False)

    # -- session thread -------------------------------------------------------------------------------
    def _reset(self, reason: str) -> None:
        self.node.publish_results(self, self._safe(self.backend.flush), None)
        self.backend.reset()
        self.number += 1
        self.node.publish_control(P.RESET, self.stream_id, reason=reason)
        logger.info("stream %s: session reset (%s), session %d", self.stream_id, reason, self.number)

    def _safe(self, fn: Any, *args: Any) -> list[FrameResult]:
        try:
            return list(fn(*args))
        except Exception as e:  # a model fault must not kill the node
            self.errors += 1
            if self.node.config.strict:
                self.node.fail(e)
                return []
            self.node.warn("backend_error", "stream %s: backend %s failed: %s: %s", self.stream_id,
                           self.node.config.backend, type(e).__name__, e)
            logger.debug("stream %s: backend traceback", self.stream_id, exc_info=True)
            return []

    def _run(self) -> None:
        stop = self.node._stop
        while True:
            with self.cond:
                while not self.queue and not self.reset_requested and not stop.is_set() and not self.closing:
                    self.cond.wait(0.2)
                if ((stop.is_set() or self.closing) and not self.queue) or self.node.failure is not None:
                    break
                reset, self.reset_requested = self.reset_requested, False
                item = self.queue.popleft() if self.queue else None
            if reset:
                self._reset("request")
            if item is None:
                continue
            frame = item.frame
            size = (frame.height, frame.width)
            if self.size is not None and size != self.size:
                self._reset("resolution")
            self.size = size
            t0 = time.perf_counter()
            results = self._safe(self.backend.step, frame)
            t1 = time.perf_counter()
            self.step_ms = 1000 * (t1 - t0)
            self.frames += 1
            self.step_s_total += t1 - t0
            if self.last_t:
                dt = max(t1 - self.last_t, 1e-6)
                self.fps = 1 / dt if self.fps == 0 else 0.9 * self.fps + 0.1 / dt
            self.last_t = t1
            self.node.publish_results(self, results, item)
        if self.node.failure is None:
            self.node.publish_results(self, self._safe(self.backend.flush), None)

    def status(self) -> dict[str, Any]:
        st = self.backend.stats()
        return {"session": self.number, "frames": self.frames, "fps": round(self.fps, 2),
                "queue": len(self.queue), "queue_size": self.node.config.queue_size, "drops": self.drops,
                "errors": self.errors, "step_ms": round(self.step_ms, 3), "size": list(self.size or ()),
                "backend_memory_bytes": int(st.memory_bytes)}


class ReconNode:
    """The reconstruction node; `start()` spawns its threads, `stop()` flushes sessions and closes sockets."""

    def __init__(self, config: ReconNodeConfig, context: zmq.Context | None = None) -> None:
        ensure_registered()
        if config.backend_instance is None and config.backend not in registered():
            raise ConfigError(f"unknown backend {config.backend!r}; known: {', '.join(sorted(registered()))}")
        for ep in (config.bind, config.publish, config.control or ""):
            check_bind(ep, config.allow_remote)
        self.config = config
        self.ctx = context or default_context()
        self.node_id = new_node_id()
        self.warn = WarnOnce(logger)  # node faults (overflow, backend errors)
        self.rejects = WarnOnce(logger)  # malformed messages, by kind
        self._local = threading.local()
        self.sessions: dict[str, Session] = {}
        self._closing: list[Session] = []  # idle sessions still flushing
        self._sessions_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._started = False
        self._decode_q: collections.deque[tuple[bytes, list[Any]]] = collections.deque()
        self._decoding = False  # a message popped from the queue and still being handled
        self._decode_cond = threading.Condition()
        self._pub_q: collections.deque[tuple[Any, ...]] = collections.deque()
        self._pub_cond = threading.Condition()
        self._ack_ep = _ACKS.format(self.node_id)
        self._threads: list[threading.Thread] = []
        self._auth: Authenticator | None = None
        self.started_at = time.time()
        self.messages_in = 0
        self.results_out = 0
        self.ingest_drops = 0
        self.result_subscribers = 0
        self.failure: BaseException | None = None

    def __str__(self) -> str:
        return f"ReconNode({self.config.bind})"

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> ReconNode:
        """Bind sockets (in the threads that own them) and start serving; returns once bound."""
        self._auth = Authenticator(self.ctx, self.config.security)
        self._ack_pull = self.ctx.socket(zmq.PULL)
        self._ack_pull.setsockopt(zmq.LINGER, 0)
        self._ack_pull.bind(self._ack_ep)
        ready = threading.Barrier(5)
        errors: list[BaseException] = []
        for name, fn in (("io", self._io_loop), ("decode", self._decode_loop), ("publish", self._publish_loop),
                         ("control", self._control_loop)):
            t = threading.Thread(target=self._guard, args=(fn, ready, errors), name=f"recon-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.wait(10)  # every thread passes the barrier once its socket is bound
            self._started = True
        if errors:
            self.stop()
            if isinstance(errors[0], zmq.ZMQError):
                raise ConfigError(f"{self}: cannot bind its sockets ({self.config.bind}, {self.config.publish}, "
                                  f"{self.config.control}): {errors[0]}") from errors[0]
            raise errors[0]
        logger.info("%s serving: frames %s, results %s, control %s, backend %s, node id %x", self,
                    self.config.bind, self.config.publish, self.config.control, self.config.backend, self.node_id)
        return self

    def _guard(self, fn: Any, ready: threading.Barrier, errors: list[BaseException]) -> None:
        try:
            fn(ready)
        except threading.BrokenBarrierError:
            return  # another thread failed to bind; start() reports its error
        except BaseException as e:  # bind errors go to start(); a later fault stops the node, loudly
            errors.append(e)
            ready.abort()
            if self._started and not self._stop.is_set():
                logger.exception("%s: thread %s died; stopping", self, threading.current_thread().name)
                self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking frames, let sessions drain and flush, publish the rest, close everything."""
        with self._stop_lock:
            first, self._stopping = not self._stopping, True
        if not first:
            self._stopped.wait(timeout)
            return
        self._stop.set()
        sessions = self._all_sessions()
        for s in sessions:
            with s.cond:
                s.cond.notify()
            s.thread.join(timeout)
        with self._decode_cond:
            self._decode_cond.notify_all()
        with self._pub_cond:
            self._pub_cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)
        if getattr(self, "_ack_pull", None) is not None:  # None when start() never ran
            self._ack_pull.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._stopped.set()
        logger.info("%s stopped after %d messages, %d results", self, self.messages_in, self.results_out)

    def fail(self, error: BaseException) -> None:
        """Strict mode: remember the first fault and stop taking frames (the owner re-raises `failure`)."""
        if self.failure is None:
            self.failure = error
            logger.error("%s: backend failed (strict): %s: %s", self, type(error).__name__, error)
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the node stops (shutdown command, signal, or a dead thread)."""
        return self._stop.wait(timeout)

    @property
    def running(self) -> bool:
        return not self._stop.is_set()

    # -- io thread ------------------------------------------------------------------------------------
    def _io_loop(self, ready: threading.Barrier) -> None:
        cfg = self.config
        sock = open_socket(self.ctx, zmq.ROUTER, limits=cfg.limits, security=cfg.security, server=True, hwm=1000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        try:
            sock.bind(cfg.bind)
            ready.wait(10)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(self._ack_pull, zmq.POLLIN)
            backlog = 4 * cfg.queue_size * max(1, cfg.max_streams)
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if self._ack_pull in events:
                    for _ in range(256):
                        try:
                            sock.send_multipart(self._ack_pull.recv_multipart(zmq.NOBLOCK), zmq.NOBLOCK)
                        except zmq.Again:
                            break
                if sock in events:
                    for _ in range(256):
                        try:
                            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self.messages_in += 1
                        with self._decode_cond:
                            if len(self._decode_q) >= backlog:
                                self.ingest_drops += 1
                                self.warn("ingest_overflow", "decode backlog full (%d), dropping a message", backlog)
                                continue
                            self._decode_q.append((parts[0].bytes, parts[1:]))
                            self._decode_cond.notify()
        finally:
            sock.close(0)

    def ack_later(self, peer: bytes, stream_id: str, epoch: int, seqs: list[int]) -> None:
        """Queue a credit message for the io thread (thread-safe through a private PUSH socket)."""
        msg = P.encode_control(P.CREDIT, stream_id, t_ns=time.time_ns(), window=self.window,
                               acked=seqs, epoch=epoch, node=self.node_id)
        sock = self._push_socket()
        try:
            sock.send_multipart([peer, *msg], zmq.NOBLOCK)
        except zmq.Again:
            self.warn("ack_backlog", "ack queue full; a camera will re-send")

    def _push_socket(self) -> zmq.Socket:
        sock = getattr(self._local, "push", None)
        if sock is None or getattr(self._local, "ep", None) != self._ack_ep:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 10000)
            sock.connect(self._ack_ep)
            self._local.push, self._local.ep = sock, self._ack_ep
        return sock

    def _close_push_socket(self) -> None:
        sock = getattr(self._local, "push", None)
        if sock is not None:
            sock.close(0)
            self._local.push = None

    # -- decode thread --------------------------------------------------------------------------------
    def _decode_loop(self, ready: threading.Barrier) -> None:
        ready.wait(10)
        try:
            next_sweep = time.monotonic() + 1.0
            while True:
                with self._decode_cond:
                    while not self._decode_q and not self._stop.is_set() and time.monotonic() < next_sweep:
                        self._decode_cond.wait(0.2)
                    if self._stop.is_set():
                        return
                    got = self._decode_q.popleft() if self._decode_q else None
                    # Counted as backlog until handled, so a status reply never shows an empty backlog while
                    # the last message's outcome (accepted or rejected) is not yet counted.
                    self._decoding = got is not None
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + 1.0
                    self._close_idle_sessions()
                if got is None:
                    continue
                peer, parts = got
                try:
                    self._handle(peer, parts)
                except ProtocolError as e:
                    self.rejects(P.fault_kind(e), "rejected message: %s", e)
                except Exception as e:  # never let one message kill the decode thread
                    self.rejects("internal_" + type(e).__name__, "error handling a message: %s", e)
                finally:
                    self._decoding = False
        finally:
            self._close_push_socket()

    def _handle(self, peer: bytes, parts: list[Any]) -> None:
        msg = P.decode(parts, self.config.limits)
        kind, h = msg.kind, msg.header
        if kind == P.FRAME:
            frame = P.to_frame(msg)
            if self.config.frame_hook is not None:
                self.config.frame_hook(frame)
            epoch = int(h.get("epoch", 0))
            session = self._session(frame.stream_id)
            if session is None:
                return
            live = bool(h.get("live", False))
            state = session.offer(_Item(frame, peer, epoch), live)
            if state == "duplicate":
                self.ack_later(peer, frame.stream_id, epoch, [frame.seq])
        elif kind == P.HEARTBEAT:
            # Answer with a credit message: it carries the window and this node's id, so a camera
            # learns both at connect time and notices a restarted node by its new id.
            self.ack_later(peer, msg.stream_id, int(h.get("epoch", h["node"])), [])
        elif kind == P.RESET:
            self.reset_stream(msg.stream_id)
        else:
            raise P._err("wrong_direction", f"{kind} is not accepted by the reconstruction node")

    def _session(self, stream_id: str) -> Session | None:
        with self._sessions_lock:
            s = self.sessions.get(stream_id)
            if s is None:
                if len(self.sessions) >= self.config.max_streams:
                    self.warn("too_many_streams", "refusing stream %s: %d sessions already", stream_id,
                              len(self.sessions))
                    return None
                try:
                    s = Session(self, stream_id)
                except ReconError as e:  # e.g. weights not installed: say so once, keep serving other work
                    self.warn("backend_create_failed", "stream %s: cannot create backend %s: %s", stream_id,
                              self.config.backend, e)
                    return None
                self.sessions[stream_id] = s
                logger.info("stream %s: new session with backend %s", stream_id, self.config.backend)
            return s

    def _close_idle_sessions(self) -> None:
        """Free the slots of streams that went quiet (bounded memory over many transient cameras)."""
        with self._sessions_lock:
            for sid, s in list(self.sessions.items()):
                if s.close_if_idle(self.config.session_idle_s):
                    del self.sessions[sid]
                    self._closing.append(s)
                    logger.info("stream %s: no frames for %.0f s, session flushed and closed", sid,
                                self.config.session_idle_s)
            self._closing = [s for s in self._closing if s.thread.is_alive()]

    def reset_stream(self, stream_id: str) -> bool:
        with self._sessions_lock:
            s = self.sessions.get(stream_id)
        if s is not None:
            s.request_reset()
        return s is not None

    # -- publish thread -------------------------------------------------------------------------------
    def publish_results(self, session: Session, results: list[FrameResult], item: _Item | None) -> None:
        """Hand results (and the ack of `item`) to the publish thread; never blocks the model."""
        with self._pub_cond:
            self._pub_q.append(("results", session, results, item))
            self._pub_cond.notify()

    def publish_control(self, kind: str, stream_id: str, **fields: Any) -> None:
        with self._pub_cond:
            self._pub_q.append(("control", P.encode_control(kind, stream_id, t_ns=time.time_ns(), **fields)))
            self._pub_cond.notify()

    def _publish_loop(self, ready: threading.Barrier) -> None:
        cfg = self.config
        # XPUB (a PUB that also reports subscriptions) so recorded replays can wait for their recorder.
        sock = open_socket(self.ctx, zmq.XPUB, limits=cfg.limits, security=cfg.security, server=True, hwm=1000)
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)
        try:
            sock.bind(cfg.publish)
            ready.wait(10)
            next_beat = 0.0
            while True:
                self._count_subscribers(sock)
                with self._pub_cond:
                    if not self._pub_q:
                        if self._stop.is_set() and all(not s.thread.is_alive() for s in self._all_sessions()):
                            break
                        gated = self.result_subscribers < cfg.min_subscribers
                        self._pub_cond.wait(min(0.02 if gated else 0.2, max(0.0, next_beat - time.monotonic())))
                    entry = self._pub_q.popleft() if self._pub_q else None
                now = time.monotonic()
                if now >= next_beat:
                    sock.send_multipart(P.encode_control(P.HEARTBEAT, t_ns=time.time_ns(), node=self.node_id,
                                                         interval_s=cfg.heartbeat_s, role="recon"))
                    next_beat = now + cfg.heartbeat_s
                if entry is None:
                    continue
                if entry[0] == "control":
                    sock.send_multipart(entry[1])
                    continue
                _, session, results, item = entry
                for r in results:
                    try:
                        parts = P.encode_result(r, points_dtype=cfg.points_dtype, stride=cfg.stride,
                                                with_image=cfg.with_image, epoch=item.epoch if item else None,
                                                session=session.number)
                    except Exception as e:
                        self.warn("encode_error", "stream %s: cannot encode result: %s", session.stream_id, e)
                        continue
                    sock.send_multipart(parts, copy=False)
                    self.results_out += 1
                if item is not None:
                    session.mark_done(item.epoch, item.frame.seq)
                    self.ack_later(item.peer, session.stream_id, item.epoch, [item.frame.seq])
            # Sessions are flushed and published: say goodbye so subscribers know nothing more comes.
            sock.send_multipart(P.encode_control(P.HEARTBEAT, t_ns=time.time_ns(), node=self.node_id,
                                                 interval_s=cfg.heartbeat_s, role="recon", bye=True))
        finally:
            self._close_push_socket()
            sock.close(linger=2000)  # let the final results reach connected subscribers

    def _count_subscribers(self, sock: zmq.Socket) -> None:
        """Track how many subscribers listen to results (XPUB subscribe/unsubscribe messages)."""
        while True:
            try:
                event = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[1:].startswith(P.TOPIC_RESULT[:-1]) or event[1:] == b"":
                before = self.result_subscribers
                self.result_subscribers = max(0, before + (1 if event[:1] == b"\x01" else -1))
                if before < self.config.min_subscribers <= self.result_subscribers:
                    logger.info("%s: %d result subscriber(s) present, accepting frames", self,
                                self.result_subscribers)

    @property
    def window(self) -> int:
        """Credit granted to cameras: none until `min_subscribers` listen, so no result is published unheard."""
        return self.config.queue_size if self.result_subscribers >= self.config.min_subscribers else 0

    def _all_sessions(self) -> list[Session]:
        with self._sessions_lock:
            return [*self.sessions.values(), *self._closing]

    # -- control thread -------------------------------------------------------------------------------
    def _control_loop(self, ready: threading.Barrier) -> None:
        cfg = self.config
        sock = open_socket(self.ctx, zmq.REP, limits=P.Limits(max_message_bytes=64 * 1024),
                           security=cfg.security, server=True)
        try:
            sock.bind(cfg.control or "")
            ready.wait(10)
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                raw = sock.recv_multipart()
                reply = self._command(raw)
                sock.send(msgpack.packb(reply, use_bin_type=True))
                if reply.get("shutdown"):
                    threading.Thread(target=self.stop, name="recon-shutdown", daemon=True).start()
        finally:
            sock.close(0)

    def _command(self, raw: list[bytes]) -> dict[str, Any]:
        try:
            if len(raw) != 1 or len(raw[0]) > 4096:
                raise ValueError("expected one small msgpack map")
            cmd = msgpack.unpackb(raw[0], raw=False, max_str_len=1024, max_bin_len=0, max_array_len=16,
                                  max_map_len=16)
            if not isinstance(cmd, dict) or not isinstance(cmd.get("cmd"), str):
                raise ValueError("missing 'cmd'")
        except Exception as e:
            self.warn("bad_control", "malformed control request: %s", e)
            return {"ok": False, "error": f"malformed request: {e}"}
        name = cmd["cmd"]
        if name == "status":
            return {"ok": True, **self.status()}
        if name == "reset":
            sid = cmd.get("stream_id")
            ok = isinstance(sid, str) and self.reset_stream(sid)
            return {"ok": ok, **({} if ok else {"error": f"no session for stream {sid!r}"})}
        if name == "shutdown":
            return {"ok": True, "shutdown": True}
        return {"ok": False, "error": f"unknown command {name[:32]!r}; use status, reset, shutdown"}

    def status(self) -> dict[str, Any]:
        """Snapshot for the control socket: sessions, rates, queues, drops, rejects by kind, memory."""
        import psutil

        sessions = {sid: s.status() for sid, s in self._all_sessions_items()}
        rejected = self.rejects.counts
        return {"node": self.node_id, "backend": self.config.backend,
                "uptime_s": round(time.time() - self.started_at, 3),
                "messages_in": self.messages_in, "results_out": self.results_out,
                "frames": sum(s["frames"] for s in sessions.values()),
                "fps": round(float(np.sum([s["fps"] for s in sessions.values()])), 2),
                "drops": self.ingest_drops + sum(s["drops"] for s in sessions.values()),
                "decode_backlog": len(self._decode_q) + int(self._decoding),
                "result_subscribers": self.result_subscribers,
                "publish_backlog": len(self._pub_q),
                "rejected": rejected, "rejected_total": int(sum(rejected.values())), "faults": self.warn.counts,
                "rss_bytes": int(psutil.Process().memory_info().rss), "sessions": sessions}

    def _all_sessions_items(self) -> list[tuple[str, Session]]:
        with self._sessions_lock:
            return list(self.sessions.items())
