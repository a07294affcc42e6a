"""Sessions of the reconstruction node: one per stream, each with its backend, a bounded queue and its own thread.

A session's thread builds (or restores) its backend, so a camera that joins never delays the frames of running
sessions (DESIGN.md §1). It then takes frames from the queue, decompresses them (in parallel across streams),
steps the backend, publishes what the step emitted, acknowledges the frame and, every `checkpoint_every`
frames, snapshots the backend for the checkpoint writer.

Fast sessions (INLINE_MAX_S): while a session's frames take under a millisecond each to decompress and step, the
ingest thread that received a frame processes it itself (`offer` answers "inline", `process_inline`), since the
hand-off to the session's thread would cost more than the frame; everything else (building, restoring, resets,
checkpoint flushes at stop, any slower backend) stays on the session's thread, and the two never process at once.

Queues: a recorded stream queues up to `queue_size` frames (its credit window); a live stream holds at most one
waiting frame, and a newer one replaces it (counted as a drop, acknowledged to the camera as dropped). Every
queued frame holds a reservation of the node-wide memory budget until its step is done.

World frames: each session has a `map_epoch`, a random id of the world frame its poses are in. It is restored
with the backend state from a checkpoint; it changes on a reset and whenever a checkpoint cannot be restored,
and the change is announced (a `reset` message, and the field on every result), so sinks start a new segment.

Stopping: a session closes by draining its queue, checkpointing (when enabled) before the backend's final flush,
flushing and publishing; `results_lost` counts frames accepted whose results never went out (only a forced stop
or a backend that never emits a frame loses any).
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from recon.backends import create_backend
from recon.backends.base import Backend
from recon.checkpoint import (
    CheckpointStore,
    SessionCheckpoint,
    backend_state,
    restore_backend_state,
    supports_checkpoints,
)
from recon.errors import ConfigError, ProtocolError, ReconError, StateError
from recon.nodes import protocol as P
from recon.nodes.admission import MemoryBudget, Owner, Peer, judge
from recon.nodes.checkpoints import CheckpointWriter
from recon.nodes.latency import LatencyWindow
from recon.nodes.publisher import Publisher
from recon.nodes.replies import Replies
from recon.types import Frame, FrameResult
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)

INLINE_MAX_S = 0.001
"""A session whose frames take at most this long to process (decompress and step, wall clock) has them
processed by the ingest thread, which received them, instead of being handed to its own thread: for such a fast
backend the hand-off (a wake-up, and two threads taking turns at the GIL) costs more than the work
(docs/benchmarks.md, transport). Each fast frame earns the session a point (at most 2 x INLINE_AFTER); it is
inline while it holds INLINE_AFTER. A slower frame costs INLINE_PENALTY points (a frame preempted on a busy
machine now and then does not end it, a backend that is often slower leaves within two frames) and one slower
than 10 x INLINE_MAX_S all of them, so another stream's frame waits behind at most one long step of a session that
had been fast. A publish that would wait for a slow subscriber is handed to the session's thread with the rest of
the frame's work: the ingest thread never waits for subscribers."""
INLINE_AFTER = 32
INLINE_PENALTY = 16

LIVE_QUEUE = 1
"""Frames a live session holds waiting (the newest replaces it): latest frame wins, end to end."""

DONE_WINDOW = 65536
"""Processed seqs remembered per recorded session for deduplication of re-sent frames (~7.5 MiB when full)."""

LIVE_DONE_WINDOW = 256
"""The same for a live session: a live camera never re-sends a frame (after a lost ack or a node restart it sends
its newest capture instead), so a short window suffices, and a long-running live session does not grow towards
DONE_WINDOW's 7.5 MiB over hours."""


def new_map_epoch() -> int:
    return secrets.randbits(62)


@dataclass(frozen=True)
class SessionOptions:
    """The node configuration a session reads (see `ReconNodeConfig` for the meaning of each)."""

    backend: str
    backend_options: dict[str, Any]
    queue_size: int
    points_dtype: str = "f4"
    stride: int = 1
    with_image: bool = True
    strict: bool = False
    frame_hook: Callable[[Frame], None] | None = None
    checkpoint_every: int = 30
    curve: bool = False
    owner_timeout_s: float = 5.0
    max_streams: int = 16
    max_streams_per_peer: int = 4
    session_idle_s: float = 60.0
    state_max_age_s: float | None = 3600.0


@dataclass
class SessionServices:
    """What a session uses besides its own state: the explicit interface to the rest of the node."""

    options: SessionOptions
    publisher: Publisher
    replies: Replies
    budget: MemoryBudget
    faults: WarnOnce
    rejects: WarnOnce
    fail: Callable[[BaseException], None]
    aborting: threading.Event
    store: CheckpointStore | None = None
    writer: CheckpointWriter | None = None
    scheduler: Any = None  # recon.nodes.scheduler.BatchScheduler: steps go through it, batched across streams
    backend_factory: Callable[..., Backend] | None = None  # default create_backend (SharedBackends: one model)
    kv_pool: Any = None  # recon.memory.offload.KVPagePool: the node's session-memory budget, idle offload


@dataclass(slots=True)
class Item:
    """A validated frame message waiting in a session queue (payloads may still be compressed)."""

    msg: P.Message
    peer: Peer
    epoch: int
    seq: int
    live: bool
    cost: int
    capture_ns: int
    received_ns: int = 0


@dataclass(slots=True)
class Offer:
    """What happened to a frame offered to a session, for the ingest thread to answer the camera."""

    status: str  # queued | inline | duplicate | inflight | dropped | refused
    replaced: Item | None = None  # a live frame the new one displaced (acknowledged as dropped)
    item: Item | None = None  # inline: the frame the caller processes now (`Session.process_inline`)
    reason: str = ""
    detail: str = ""
    retry_s: float = 0.0
    whole_stream: bool = False


def _ranges(seqs: Iterable[int], limit: int = 4096) -> list[list[int]]:
    """Sorted seqs as [first, last] runs (the most recent `limit` runs)."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out[-limit:]


def _expand(ranges: list[list[int]]) -> list[int]:
    seqs: list[int] = []
    for first, last in ranges:
        seqs.extend(range(int(first), int(last) + 1))
    return seqs[-DONE_WINDOW:]


class Session:
    """One stream: its backend, bounded queue, counters and worker thread."""

    def __init__(self, stream_id: str, services: SessionServices, owner: Owner, *,
                 backend: Backend | None = None, predecessor: Session | None = None, live: bool = False) -> None:
        self.stream_id = stream_id
        self.services = services
        self.options = services.options
        self.owner = owner
        self.live = live
        self.backend: Backend | None = backend
        self._predecessor = predecessor
        self.state = "starting"
        self.number = 0
        self.map_epoch = new_map_epoch()
        self.restored = False
        self.frames_before_restart = 0
        self.epoch: int | None = owner.epoch
        self.done: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.queue: collections.deque[Item] = collections.deque()
        self.queued: set[int] = set()
        self.cond = threading.Condition()
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.accepted = 0
        self.drops = 0
        self.refused = 0
        self.errors = 0
        self.rejected = 0
        self.fps = 0.0
        self.step_ms = 0.0
        self.step_s_total = 0.0
        self.latency = LatencyWindow()  # capture -> publish, every result
        self.step_latency = LatencyWindow()  # capture -> publish, results emitted by their own frame's step
        self.results_late = 0  # results emitted by a later step or the flush (windowed / initialising backends)
        self.arrival = LatencyWindow()  # capture -> received by the node (camera-side age and transport)
        self.waiting = LatencyWindow()  # received -> its step starts (queue, decompression)
        self.steps = LatencyWindow()  # backend step durations
        self.created = time.monotonic()
        self.last_frame_at = self.created
        self.results_out = 0
        self.results_lost = 0
        self.checkpointing = services.store is not None and services.writer is not None
        self.checkpoints = 0
        self.durable: tuple[int | None, int] | None = None  # (camera epoch, seq) covered by the last checkpoint
        self._since_checkpoint = 0
        self._awaiting: collections.OrderedDict[int, None] = collections.OrderedDict()  # accepted, no result yet
        self._frame_info: collections.OrderedDict[int, tuple[int, int]] = collections.OrderedDict()
        self._reset_reason: str | None = None
        self._announce: str | None = None  # a new world frame to announce (reset message) before the next result
        self._ack_batch: list[Item] = []  # processed frames whose acknowledgement is being batched
        self._closing = False
        self._force = False
        self._busy = False  # a thread (this session's or the ingest thread, inline) is processing a frame
        self._fast = 0  # inline points (INLINE_MAX_S)
        self._handover: tuple[Item, list[FrameResult], bool] | None = None  # inline frame left to this thread
        self.inline_frames = 0
        self._defer_ack = False  # inline: the ingest thread flushes this frame's acknowledgement after its burst
        self._last_t = 0.0
        self.thread = threading.Thread(target=self._run, name=f"session-{stream_id}", daemon=True)

    def __str__(self) -> str:
        return f"stream {self.stream_id}"

    def start(self) -> Session:
        self.thread.start()
        return self

    # -- called from the ingest thread ------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return LIVE_QUEUE if self.live else self.options.queue_size

    def window(self) -> int:
        """Credit granted to the owner: frames it may have in flight (1 for a live camera)."""
        if not self.services.publisher.accepting:
            return 0
        return 1 if self.live else self.options.queue_size

    def durable_seq(self, epoch: int | None) -> int | None:
        if self.durable is None or self.durable[0] != epoch:
            return None
        return self.durable[1]

    def offer(self, item: Item) -> Offer:
        """Queue a frame, or say why not (see `Offer`)."""
        seq = item.seq
        budget = self.services.budget
        with self.cond:
            if self._closing:
                return Offer("refused", reason="stopping", detail=f"{self} is closing", retry_s=1.0)
            if item.live:
                self.live = True
            if self.epoch != item.epoch:
                # A restarted camera: forget the old epoch's seqs, keep the backend (the session continues).
                self.epoch, self.done = item.epoch, collections.OrderedDict()
            if seq in self.done:
                return Offer("duplicate")
            if seq in self.queued:
                return Offer("inflight")
            replaced = None
            if len(self.queue) >= self.capacity:
                # A credit-respecting camera never gets here. Live: latest wins, the waiting frame is dropped and
                # acknowledged as such. Recorded: the new frame is refused, its camera sends it again later.
                if not item.live:
                    self.refused += 1
                    self.services.faults("queue_overflow", "%s: queue full, refused recorded seq %d", self, seq)
                    return Offer("refused", reason="queue_full", detail=f"{self}: queue of {self.capacity} frames "
                                 "is full (the camera sent beyond its credit)", retry_s=0.5)
                replaced = self._drop_oldest()
            if not budget.try_reserve(item.cost):
                limit = budget.limit
                detail = (f"the node's memory budget for buffered frames ({limit} bytes, --max-buffered-mb) is full; "
                          f"this frame needs {item.cost} bytes")
                if item.live:
                    self.drops += 1
                    self.services.faults("budget_drop", "%s: %s; live seq %d dropped", self, detail, seq)
                    return Offer("dropped", replaced=replaced)
                self.refused += 1
                self.services.faults("budget_refusal", "%s: %s; recorded seq %d refused for now", self, detail, seq)
                return Offer("refused", replaced=replaced, reason="busy", detail=detail, retry_s=0.25)
            inline = self._may_inline()
            if inline:
                self._busy = True
            else:
                self.queue.append(item)
            self.queued.add(seq)
            self._awaiting[seq] = None
            while len(self._awaiting) > DONE_WINDOW:
                self._awaiting.popitem(last=False)
            self.accepted += 1
            self.last_frame_at = time.monotonic()
            if inline:
                return Offer("inline", replaced=replaced, item=item)
            self.cond.notify()
        return Offer("queued", replaced=replaced)

    def _may_inline(self) -> bool:
        """(under cond) Whether the offering thread may process the frame itself now (INLINE_MAX_S)."""
        services = self.services
        return (self._fast >= INLINE_AFTER and not self.queue and not self._busy and self.state == "running"
                and self._reset_reason is None and self._announce is None
                and services.scheduler is None and services.kv_pool is None and services.publisher.accepting)

    def process_inline(self, item: Item, defer_ack: bool = False) -> None:
        """Process a frame `offer` returned as "inline", on the calling (ingest) thread; `defer_ack`: more frames of
        its sender are waiting, so its acknowledgement may wait for theirs (the caller then calls `flush_acks`)."""
        self._defer_ack = defer_ack
        try:
            self.inline_frames += 1
            self._process(item, inline=True)
        except BaseException as e:
            self.errors += 1
            logger.exception("%s: processing a frame on the ingest thread failed", self)
            if self.options.strict:
                self.services.fail(e)
        finally:
            self._defer_ack = False
            with self.cond:
                if self._handover is None:
                    self._busy = False
                if self._handover is not None or self._reset_reason is not None or self._closing:
                    self.cond.notify()

    def _drop_oldest(self) -> Item:
        old = self.queue.popleft()
        self.queued.discard(old.seq)
        self._awaiting.pop(old.seq, None)
        self.services.budget.release(old.cost)
        self.drops += 1
        return old

    def request_reset(self, reason: str) -> None:
        with self.cond:
            self._reset_reason = reason
            self.cond.notify()

    def close(self, force: bool = False) -> None:
        """Stop taking frames; the thread drains, checkpoints, flushes and ends (`force`: abandon the queue)."""
        with self.cond:
            self._closing = True
            self._force = self._force or force
            self.cond.notify()

    def idle_for(self, now: float) -> float:
        with self.cond:
            return 0.0 if self.queue else now - self.last_frame_at

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    # -- session thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self._start():
                self.state = "running"
                self._serve()
        except BaseException as e:  # a fault here must not pass silently: the node logs and counts it
            self.errors += 1
            logger.exception("%s: session thread failed", self)
            if self.options.strict:
                self.services.fail(e)
        finally:
            self._finish()

    def _start(self) -> bool:
        """Build (or take) the backend and restore the checkpoint; False when the stream cannot be served."""
        if self._predecessor is not None:
            # The same stream's previous session is still flushing: restore what it checkpoints last.
            self._predecessor.thread.join()
            if self.services.writer is not None:
                self.services.writer.wait_idle(self.stream_id)
        try:
            if self.backend is None:
                create = self.services.backend_factory or create_backend
                self.backend = create(self.options.backend, **self.options.backend_options)
        except ReconError as e:  # e.g. weights not installed: say so to the camera, keep serving other streams
            self.services.faults("backend_create_failed", "%s: cannot create backend %s: %s", self,
                                 self.options.backend, e)
            self._refuse_everything("backend_unavailable", f"the node cannot create backend "
                                    f"{self.options.backend}: {e}")
            return False
        if self.checkpointing and not supports_checkpoints(self.backend):
            self.checkpointing = False
            self.services.faults("no_checkpoints", "backend %s cannot save its state: its sessions start a new "
                                 "world frame after a node restart", self.options.backend)
        store = self.services.store
        if self.checkpointing and store is not None and store.exists(self.stream_id):
            self._restore(store)
        logger.info("%s: %s session with backend %s (map epoch %x)", self, "restored" if self.restored else "new",
                    self.options.backend, self.map_epoch)
        return True

    def _restore(self, store: CheckpointStore) -> None:
        assert self.backend is not None
        try:
            ckpt = store.load(self.stream_id)
            store.check_backend(ckpt, self.options.backend, self.options.backend_options)
            restore_backend_state(self.backend, ckpt.state)
        except StateError as e:
            logger.error("%s: cannot restore its checkpoint (%s); it starts a new world frame", self, e)
            store.discard(self.stream_id, str(e))
            self.backend.reset()
            self.map_epoch = new_map_epoch()
            self._announce = "restart"  # published with the first result, once subscribers listen
            return
        rec = ckpt.session
        self.number = int(rec.get("session", 0))
        self.map_epoch = int(rec.get("map_epoch", self.map_epoch))
        size = rec.get("size")
        self.size = (int(size[0]), int(size[1])) if size else None
        saved_epoch = rec.get("camera_epoch")
        with self.cond:
            if saved_epoch is not None and (self.epoch is None or self.epoch == saved_epoch):
                self.epoch = int(saved_epoch)
                done = _expand(rec.get("done", []))
                self.done = collections.OrderedDict.fromkeys(done)
                # Queued re-sends of frames already in the state are duplicates: acknowledge, do not step them.
                for item in [i for i in self.queue if i.epoch == self.epoch and i.seq in self.done]:
                    self.queue.remove(item)
                    self.queued.discard(item.seq)
                    self._awaiting.pop(item.seq, None)
                    self.services.budget.release(item.cost)
                    self.services.replies.credit(item.peer.routing_id, self.stream_id, item.epoch,
                                                 window=self.window(), acked=[item.seq])
                if done:
                    self.durable = (self.epoch, max(done))
        self.restored = True
        self.frames_before_restart = int(rec.get("frames", 0))
        logger.info("%s: restored from %s (frame %d of the session, map epoch %x, %.1f s old)", self, store.root,
                    self.frames_before_restart, self.map_epoch, (time.time_ns() - ckpt.created_ns) / 1e9)

    def _serve(self) -> None:
        publisher = self.services.publisher
        while True:
            if self._ack_batch and not self.queue:
                self.flush_acks()
            with self.cond:
                # Nothing is processed while too few subscribers listen (`min_subscribers`): its result would be
                # published into the void. Frames wait in the queue (a restarted camera may re-send before the
                # recorder is back). Nor while the ingest thread processes one of this stream's frames (inline).
                while self._handover is None and (self._busy or ((not self.queue or not publisher.accepting)
                                                                 and self._reset_reason is None
                                                                 and not self._closing)):
                    self.cond.wait(0.05 if self.queue else 0.5)
                handover, self._handover = self._handover, None
                if handover is None and self._closing and (self._force or not self.queue):
                    return
                reset, self._reset_reason = (None, self._reset_reason) if handover else (self._reset_reason, None)
                item = self.queue.popleft() if self.queue and handover is None else None
                self._busy = True
            try:
                if handover is not None:
                    self._complete(*handover)
                    continue
                if reset is not None:
                    self._reset(reset)
                if self._announce is not None:
                    publisher.control(P.RESET, self.stream_id, reason=self._announce, map_epoch=self.map_epoch)
                    self._announce = None
                if item is not None:
                    self._process(item)
                    if self.services.aborting.is_set():
                        return
            finally:
                with self.cond:
                    self._busy = False

    def _process(self, item: Item, inline: bool = False) -> None:
        """Decompress, step, publish, acknowledge; `inline`: on the ingest thread, where publishing never waits
        (what a full subscriber queue holds back is handed over to this session's thread with the rest)."""
        assert self.backend is not None
        started = time.perf_counter()
        handover = None
        try:
            try:
                frame = P.to_frame(item.msg)
                if self.options.frame_hook is not None:
                    self.options.frame_hook(frame)
            except ProtocolError as e:
                kind = P.fault_kind(e)
                self.rejected += 1
                self.services.rejects(kind, "rejected message: %s", e)
                self._awaiting.pop(item.seq, None)
                self.services.replies.refuse(item.peer.routing_id, self.stream_id, item.epoch, reason=kind,
                                             detail=str(e), seqs=[item.seq], retry_s=0.0)
                with self.cond:
                    self.queued.discard(item.seq)
                return
            size = (frame.height, frame.width)
            if self.size is not None and size != self.size:
                self._reset("resolution")
            self.size = size
            self._frame_info[item.seq] = (item.epoch, item.capture_ns)
            while len(self._frame_info) > 4096:
                self._frame_info.popitem(last=False)
            if item.received_ns:
                self.arrival.add((item.received_ns - item.capture_ns) / 1e6)
                self.waiting.add((time.time_ns() - item.received_ns) / 1e6)
            t0 = time.perf_counter()
            results = self._safe(self._step, frame)
            t1 = time.perf_counter()
            took = t1 - started  # decompression and step: publishing and acknowledging never wait inline
            del frame
            self.step_ms = 1000 * (t1 - t0)
            self.steps.add(self.step_ms)
            self.frames += 1
            self.step_s_total += t1 - t0
            if self._last_t:
                dt = max(t1 - self._last_t, 1e-6)
                self.fps = 1 / dt if self.fps == 0 else 0.9 * self.fps + 0.1 / dt
            self._last_t = t1
            self._since_checkpoint += 1
            due = self.checkpointing and self._since_checkpoint >= self.options.checkpoint_every
            left: list[FrameResult] = []
            tracker = self._publish(results, track=due, own_seq=item.seq, left=left if inline else None)
            if left:
                handover = (item, left, due)
            else:
                self._mark_done(item)
        finally:
            item.msg = None  # type: ignore[assignment] - the decoded arrays go now, with their budget
            self.services.budget.release(item.cost)
        if handover is not None or took > 10 * INLINE_MAX_S:
            self._fast = 0
        elif took > INLINE_MAX_S:
            self._fast = max(0, self._fast - INLINE_PENALTY)
        else:
            self._fast = min(2 * INLINE_AFTER, self._fast + 1)
        if handover is not None:
            with self.cond:
                self._handover = handover  # process_inline wakes this session's thread for it
            return
        self._ack(item)
        if due:
            self._checkpoint(tracker)

    def _complete(self, item: Item, left: list[FrameResult], due: bool) -> None:
        """Finish a frame the ingest thread processed inline whose results could not all be published at once."""
        tracker = self._publish(left, track=due, own_seq=item.seq)
        self._mark_done(item)
        self._ack(item)
        if due:
            self._checkpoint(tracker)

    def _mark_done(self, item: Item) -> None:
        with self.cond:
            if item.epoch == self.epoch:
                self.done[item.seq] = None
                while len(self.done) > (LIVE_DONE_WINDOW if self.live else DONE_WINDOW):
                    self.done.popitem(last=False)
            self.queued.discard(item.seq)

    def _step(self, frame: Frame) -> list[FrameResult]:
        """The backend step: through the batch scheduler when the node batches, with the session's state made
        resident in the node's KV pool first when it has one (recon.memory.offload)."""
        assert self.backend is not None
        pool, scheduler = self.services.kv_pool, self.services.scheduler
        if pool is not None:
            pool.acquire(self.stream_id, self.backend)
        try:
            return self.backend.step(frame) if scheduler is None else scheduler.step(self.stream_id, self.backend,
                                                                                     frame)
        finally:
            if pool is not None:
                pool.release(self.stream_id)

    def _ack(self, item: Item) -> None:
        """Acknowledge `item`; a recorded stream's acks are batched while more of its frames wait (up to half its
        window), so a busy session sends one credit per few frames instead of one per frame. Inline, the ingest
        thread says more of the sender's frames wait (`process_inline(defer_ack=True)`) and flushes after them."""
        with self.cond:
            batch = self._ack_batch
            mixed = bool(batch) and (batch[0].peer.routing_id != item.peer.routing_id or batch[0].epoch != item.epoch)
        if mixed:
            self.flush_acks()
        with self.cond:
            self._ack_batch.append(item)
            flush = item.live or len(self._ack_batch) >= max(1, self.options.queue_size // 2) or \
                (not self.queue and not self._defer_ack)
        if flush:
            self.flush_acks()

    def holds_acks(self) -> bool:
        """Whether acknowledgements wait in the batch (the ingest thread's delay timer starts with the first)."""
        with self.cond:
            return bool(self._ack_batch)

    def flush_acks(self) -> None:
        """Send the batched acknowledgements now (also the ingest thread, after frames it processed inline)."""
        with self.cond:  # either thread may flush (inline frames); each acknowledgement goes out once
            batch, self._ack_batch = self._ack_batch, []
        if batch:
            first = batch[0]
            self.services.replies.credit(first.peer.routing_id, self.stream_id, first.epoch, window=self.window(),
                                         acked=[i.seq for i in batch], durable=self.durable_seq(first.epoch))

    def _safe(self, fn: Callable[..., Any], *args: Any) -> list[FrameResult]:
        try:
            return list(fn(*args))
        except Exception as e:  # a model fault must not kill the node
            self.errors += 1
            if self.options.strict:
                self.services.fail(e)
                return []
            self.services.faults("backend_error", "%s: backend %s failed: %s: %s", self, self.options.backend,
                                 type(e).__name__, e)
            logger.debug("%s: backend traceback", self, exc_info=True)
            return []

    def _publish(self, results: list[FrameResult], track: bool = False, own_seq: int | None = None,
                 left: list[FrameResult] | None = None) -> Any:
        """Encode and publish `results`; returns the tracker of the last one when `track`. With `left`, never wait
        for a full subscriber queue: the result that would wait and those after it are appended to `left`.

        `own_seq`: the frame whose step emitted them. Its own result measures the service's freshness
        (`step_latency`); results of earlier frames (a windowed backend emitting late, a monocular one holding
        frames until initialised) count in `latency` only, which is what a user sees."""
        opts = self.options
        tracker = None
        for i, r in enumerate(results):
            epoch, capture_ns = self._frame_info.get(r.seq, (self.epoch, r.t_ns))
            publish_ns = time.time_ns()
            try:
                parts = P.encode_result(r, points_dtype=opts.points_dtype, stride=opts.stride,
                                        with_image=opts.with_image, epoch=epoch, session=self.number,
                                        map_epoch=self.map_epoch, capture_ns=capture_ns, publish_ns=publish_ns)
            except Exception as e:
                self.services.faults("encode_error", "%s: cannot encode result of seq %d: %s", self, r.seq, e)
                continue
            sent = self.services.publisher.publish(parts, track=track and i == len(results) - 1,
                                                   abort=self.services.aborting.is_set, wait=left is None)
            if sent is False:
                if left is not None and not self.services.aborting.is_set():
                    left.extend(results[i:])
                    break
                continue
            if track and i == len(results) - 1:
                tracker = sent
            self.results_out += 1
            if not r.is_update:
                ms = (publish_ns - capture_ns) / 1e6
                self.latency.add(ms)
                if r.seq == own_seq:
                    self.step_latency.add(ms)
                else:
                    self.results_late += 1
                self._awaiting.pop(r.seq, None)
        return tracker

    def _reset(self, reason: str) -> None:
        assert self.backend is not None
        self._publish(self._safe(self.backend.flush))
        self.backend.reset()
        self.number += 1
        self.map_epoch = new_map_epoch()
        self.services.publisher.control(P.RESET, self.stream_id, reason=reason, map_epoch=self.map_epoch)
        logger.info("%s: session reset (%s), session %d, map epoch %x", self, reason, self.number, self.map_epoch)
        if self.checkpointing:
            self._checkpoint(None)  # the old world's checkpoint must not come back after a restart

    def _record(self) -> dict[str, Any]:
        with self.cond:
            done = list(self.done)
            epoch = self.epoch
        return {"session": self.number, "map_epoch": self.map_epoch, "camera_epoch": epoch,
                "owner_key": self.owner.key, "done": _ranges(done), "frames": self.frames,
                "size": list(self.size) if self.size else None, "live": self.live}

    def _checkpoint(self, tracker: Any) -> None:
        """Snapshot the backend (between steps) and hand it to the writer."""
        writer = self.services.writer
        assert self.backend is not None and writer is not None
        self._since_checkpoint = 0
        try:
            state = backend_state(self.backend)
        except StateError as e:
            self.checkpointing = False
            self.services.faults("checkpoint_failed", "%s: cannot snapshot backend %s, checkpoints off for this "
                                 "session: %s", self, self.options.backend, e)
            return
        record = self._record()
        ckpt = SessionCheckpoint(self.stream_id, self.options.backend, self.options.backend_options, state, record,
                                 time.time_ns())
        last = max(record["done"][-1]) if record["done"] else None
        epoch = record["camera_epoch"]

        def done(ok: bool) -> None:
            if ok:
                self.checkpoints += 1
                if last is not None:
                    self.durable = (epoch, last)

        writer.submit(ckpt, done, tracker)

    def _refuse_everything(self, reason: str, detail: str) -> None:
        with self.cond:
            self._closing = True
            items = list(self.queue)
            self.queue.clear()
            self.queued.clear()
        for item in items:
            self.services.budget.release(item.cost)
            self._awaiting.pop(item.seq, None)
        owner = self.owner.peer
        if owner is not None:
            self.services.replies.refuse(owner.routing_id, self.stream_id, self.epoch, reason=reason, detail=detail)
        self.state = "failed"

    def _finish(self) -> None:
        self.flush_acks()
        force = self._force or self.services.aborting.is_set()
        if self.backend is not None and self.state == "running":
            self.state = "closing"
            if not force:
                if self.checkpointing and self.frames:
                    self._checkpoint(None)  # resumable: taken before the flush ends the stream
                self._publish(self._safe(self.backend.flush))
            if self.services.scheduler is not None:
                self.services.scheduler.forget(self.stream_id)
            if self.services.kv_pool is not None:
                self.services.kv_pool.forget(self.stream_id)
            close = getattr(self.backend, "close", None)
            if callable(close) and not force:
                try:
                    close()
                except Exception as e:  # noqa: BLE001 - a failing close must not hide the counts below
                    logger.warning("%s: closing the backend failed: %s", self, e)
        with self.cond:
            abandoned = list(self.queue)
            self.queue.clear()
            self.queued.clear()
            self._closing = True
        for item in abandoned:
            self.services.budget.release(item.cost)
        self.results_lost = len(self._awaiting)
        if self.results_lost:
            logger.error("%s: %d accepted frame(s) never got a published result (%s stop)", self, self.results_lost,
                         "forced" if force else "clean")
        if self.state != "failed":
            self.state = "closed"

    # -- status -----------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        memory = 0
        if self.backend is not None:
            try:
                memory = int(self.backend.stats().memory_bytes)
            except Exception:  # noqa: BLE001 - stats race a step on another thread; status must still answer
                memory = -1
        now = time.monotonic()
        durable = self.durable[1] if self.durable else None
        return {"state": self.state, "session": self.number, "map_epoch": self.map_epoch, "live": self.live,
                "frames": self.frames, "accepted": self.accepted, "fps": round(self.fps, 2),
                "queue": len(self.queue), "queue_size": self.capacity, "drops": self.drops,
                "refused": self.refused, "rejected": self.rejected, "errors": self.errors,
                "step_ms": round(self.step_ms, 3),
                "step_mean_ms": round(1000 * self.step_s_total / self.frames, 3) if self.frames else None,
                "size": list(self.size or ()), "backend_memory_bytes": memory,
                "latency_ms": self.latency.summary(), "step_latency_ms": self.step_latency.summary(),
                "results_late": self.results_late, "inline_frames": self.inline_frames,
                "arrival_ms": self.arrival.summary(),
                "waiting_ms": self.waiting.summary(), "steps_ms": self.steps.summary(), "results_out": self.results_out,
                "results_pending": len(self._awaiting), "results_lost": self.results_lost,
                "owner": self.owner.describe(now), "age_s": round(now - self.created, 3),
                "idle_s": round(self.idle_for(now), 3), "restored": self.restored,
                "checkpoint": {"enabled": self.checkpointing, "written": self.checkpoints, "durable_seq": durable,
                               "every": self.options.checkpoint_every}}


class SessionTable:
    """The node's sessions by stream id: creation and admission (slots, quotas, ownership), idle closing."""

    def __init__(self, services: SessionServices, spare_backend: Backend | None = None,
                 only_backend: Backend | None = None) -> None:
        self.services = services
        self.options = services.options
        self.sessions: dict[str, Session] = {}
        self.closing: list[Session] = []
        self.ended: collections.OrderedDict[str, Session] = collections.OrderedDict()  # last ended, per stream
        self.not_owner = 0
        self.takeovers = 0
        self.refusals: collections.Counter[str] = collections.Counter()
        self._spare = spare_backend
        self._only = only_backend
        self._lock = threading.Lock()
        self._accepting = True

    # -- admission --------------------------------------------------------------------------------------------
    def _refusal(self, reason: str, detail: str, retry_s: float = 0.0) -> Offer:
        self.refusals[reason] += 1
        self.services.faults(f"refused_{reason}", "%s", detail)
        return Offer("refused", reason=reason, detail=detail, retry_s=retry_s, whole_stream=True)

    def _new_session(self, stream_id: str, owner: Owner, live: bool) -> Session | Offer:
        opts = self.options
        if self._only is not None:
            if self.sessions or self.closing:
                return self._refusal("no_slot", f"refusing stream {stream_id}: this node serves one stream with the "
                                     "backend it was given")
            backend, self._only = self._only, None
        else:
            if len(self.sessions) >= opts.max_streams:
                return self._refusal("no_slot", f"refusing stream {stream_id}: all {opts.max_streams} stream slots "
                                     f"are taken (--max-streams)")
            backend, self._spare = self._spare, None
        principal = owner.peer.principal if owner.peer else None
        if principal is not None:
            held = sum(1 for s in self.sessions.values() if s.owner.peer and s.owner.peer.principal == principal)
            if held >= opts.max_streams_per_peer:
                return self._refusal("quota", f"refusing stream {stream_id}: its sender already holds {held} streams "
                                     f"(--max-streams-per-peer {opts.max_streams_per_peer})")
        predecessor = next((s for s in self.closing if s.stream_id == stream_id and s.alive), None)
        session = Session(stream_id, self.services, owner, backend=backend, predecessor=predecessor, live=live)
        self.sessions[stream_id] = session
        return session.start()

    def offer(self, peer: Peer, msg: P.Message) -> tuple[Session | None, Offer]:
        """Admit a validated frame message from `peer` into its stream's session."""
        h = msg.header
        stream_id, seq = msg.stream_id, msg.seq
        epoch = int(h.get("epoch", 0))
        live = bool(h.get("live", False))
        with self._lock:
            if not self._accepting:
                return None, Offer("refused", reason="stopping", detail="the node is shutting down", retry_s=1.0)
            session = self.sessions.get(stream_id)
            if session is None:
                made = self._new_session(stream_id, Owner.of(peer, epoch), live)
                if isinstance(made, Offer):
                    return None, made
                session = made
            elif not self._may_use(session, peer, epoch):
                return session, self._owner_refusal(session, peer, epoch)
        cost = P.decoded_bytes(h) + sum(len(b) for b in msg.compressed.values())
        item = Item(msg, peer, epoch, seq, live, cost, int(h.get("capture_ns", h["t_ns"])), time.time_ns())
        return session, session.offer(item)

    def _may_use(self, session: Session, peer: Peer, epoch: int | None) -> bool:
        verdict = judge(session.owner, peer, epoch, curve=self.options.curve,
                        owner_timeout_s=self.options.owner_timeout_s)
        if not verdict.ok:
            return False
        if verdict.rebind:
            if verdict.takeover:
                self.takeovers += 1
                logger.warning("stream %s: taken over by a new sender (%s) after its owner was silent for %.1f s",
                               session.stream_id, peer.principal, time.monotonic() - session.owner.last_heard)
            session.owner = Owner(peer, epoch, peer.key or session.owner.key, time.monotonic(), time.monotonic())
        session.owner.last_heard = time.monotonic()
        return True

    def _owner_refusal(self, session: Session, peer: Peer, epoch: int | None) -> Offer:
        verdict = judge(session.owner, peer, epoch, curve=self.options.curve,
                        owner_timeout_s=self.options.owner_timeout_s)
        self.not_owner += 1
        self.refusals["not_owner"] += 1
        self.services.faults("not_owner", "stream %s: refused a message from %s: %s", session.stream_id,
                             peer.principal, verdict.detail)
        return Offer("refused", reason="not_owner", detail=f"stream {session.stream_id}: {verdict.detail}",
                     retry_s=verdict.retry_s, whole_stream=True)

    def heard(self, peer: Peer, stream_id: str, epoch: int | None, live: bool | None) -> Session | None:
        """A heartbeat from `peer`: keeps its ownership fresh (only the owner's heartbeats count)."""
        with self._lock:
            session = self.sessions.get(stream_id)
            if session is None:
                return None
            owner = session.owner
            mine = (owner.peer is not None and owner.peer.routing_id == peer.routing_id) or \
                (self.options.curve and owner.key is not None and owner.key == peer.key) or \
                (not self.options.curve and epoch is not None and epoch == owner.epoch)
            if not mine:
                return None
            owner.last_heard = time.monotonic()
            if live:
                session.live = True
            return session

    def reset_from(self, peer: Peer, stream_id: str, epoch: int | None) -> Offer | None:
        """A camera asks to reset its stream: only the owner may (None: done or no such stream)."""
        with self._lock:
            session = self.sessions.get(stream_id)
            if session is None:
                return None
            if not self._may_use(session, peer, epoch):
                return self._owner_refusal(session, peer, epoch)
        session.request_reset("request")
        return None

    def reset(self, stream_id: str) -> bool:
        """Operator reset (control socket)."""
        with self._lock:
            session = self.sessions.get(stream_id)
        if session is not None:
            session.request_reset("request")
        return session is not None

    def window_for(self, stream_id: str, live: bool) -> tuple[int, Session | None]:
        with self._lock:
            session = self.sessions.get(stream_id)
        if session is not None:
            return session.window(), session
        if not self.services.publisher.accepting:
            return 0, None
        return (1 if live else self.options.queue_size), None

    # -- lifecycle --------------------------------------------------------------------------------------------
    def restore_all(self) -> list[str]:
        """Start a session for every checkpoint in the store (owned by the sender the checkpoint names)."""
        store = self.services.store
        if store is None:
            return []
        started = []
        for stream_id in store.stream_ids(self.options.state_max_age_s):
            try:
                rec = store.load_record(stream_id)
            except StateError as e:
                logger.error("stream %s: unreadable checkpoint: %s", stream_id, e)
                store.discard(stream_id, str(e))
                continue
            with self._lock:
                if stream_id in self.sessions or len(self.sessions) >= self.options.max_streams:
                    continue
                owner = Owner.restored(rec.get("camera_epoch"), rec.get("owner_key"))
                made = self._new_session(stream_id, owner, bool(rec.get("live", False)))
            if isinstance(made, Session):
                started.append(stream_id)
        if started:
            logger.info("restoring %d session(s) from %s: %s", len(started), store.root, ", ".join(started))
        return started

    def sweep(self) -> None:
        """Close sessions idle for `session_idle_s` (their slots free up; their checkpoint stays)."""
        now = time.monotonic()
        with self._lock:
            for stream_id, s in list(self.sessions.items()):
                idle = s.idle_for(now)
                if idle >= self.options.session_idle_s or s.state == "failed" or not s.alive:
                    del self.sessions[stream_id]
                    self.closing.append(s)
                    if s.state != "failed" and s.alive:
                        logger.info("%s: no frames for %.0f s, session closed (checkpointed and flushed)", s, idle)
                    s.close()
            for s in [s for s in self.closing if not s.alive]:
                self.closing.remove(s)
                self.ended[s.stream_id] = s
                self.ended.move_to_end(s.stream_id)
                while len(self.ended) > 1024:
                    self.ended.popitem(last=False)

    def close_all(self, force: bool = False) -> list[Session]:
        with self._lock:
            self._accepting = False
            every = [*self.sessions.values(), *self.closing]
        for s in every:
            s.close(force)
        return every

    def all(self) -> list[Session]:
        """Every session the node had: active, closing, and the last ended one of each stream (for the totals)."""
        with self._lock:
            return list({id(s): s for s in (*self.sessions.values(), *self.closing, *self.ended.values())}.values())

    def items(self) -> list[tuple[str, Session]]:
        """Active sessions by stream id."""
        with self._lock:
            return list(self.sessions.items())

    def latest(self) -> dict[str, Session]:
        """Per stream its current session, or its last one when it has ended (what `status` lists)."""
        with self._lock:
            latest = dict(self.ended)
            latest.update({s.stream_id: s for s in self.closing})
            latest.update(self.sessions)
            return latest

    def get(self, stream_id: str) -> Session | None:
        with self._lock:
            return self.sessions.get(stream_id)

    def results_lost(self) -> int:
        return sum(s.results_lost for s in self.all())


def check_options(options: SessionOptions) -> None:
    if options.queue_size < 1:
        raise ConfigError(f"queue_size must be >= 1, got {options.queue_size}")
    if options.checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1 frame, got {options.checkpoint_every}")
    if options.max_streams_per_peer < 1:
        raise ConfigError(f"max_streams_per_peer must be >= 1, got {options.max_streams_per_peer}")
