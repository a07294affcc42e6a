"""The reconstruction node: frames in (ROUTER), one backend session per stream, results out (XPUB).

The node is assembled from parts with one job each, talking through explicit interfaces:

    ingest      (recon.nodes.ingest)     ROUTER <- cameras: validation, admission, replies; its own thread
    sessions    (recon.nodes.sessions)   per stream: backend build/restore, queue, step, publish, ack, checkpoint;
                                         one thread each (a session whose steps take under 1 ms has its frames
                                         processed by the ingest thread: sessions.INLINE_MAX_S); the table
                                         decides slots, quotas and ownership
    admission   (recon.nodes.admission)  who may use a stream, the node-wide memory budget
    publisher   (recon.nodes.publisher)  XPUB -> subscribers: results, resets, heartbeats (thread-safe)
    replies     (recon.nodes.replies)    credits and refusals back to one camera (thread-safe)
    checkpoints (recon.nodes.checkpoints, recon.checkpoint)   the writer thread and the on-disk format
    control     (recon.nodes.control)    REP: status, reset, shutdown; its own thread

Flow control: the node grants each camera a window of `queue_size` frames (1 for a live camera: its newest frame
is the only one ever waiting); a frame is acknowledged after the results of its step were published, so a recorded
source never has more in flight than the queue holds and, after a node restart, re-sends exactly what was not
processed. With `state_dir`, every session checkpoints its backend every `checkpoint_every` frames and at stop; a
restarted node restores them and continues each stream in the same world frame.

Stopping (`stop`) waits, however long the backends take, until every session has drained its queue, flushed
and published; `abort` (a second SIGINT/SIGTERM) cuts that short and `results_lost` says how many frames lost
their results.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from recon.backends import create_backend, registered
from recon.backends.base import Backend
from recon.checkpoint import CheckpointStore
from recon.errors import ConfigError
from recon.nodes import protocol as P
from recon.nodes.admission import MemoryBudget
from recon.nodes.checkpoints import CheckpointWriter
from recon.nodes.control import ControlServer
from recon.nodes.ingest import Ingest
from recon.nodes.publisher import Publisher
from recon.nodes.replies import Replies
from recon.nodes.sessions import Session, SessionOptions, SessionServices, SessionTable, check_options
from recon.nodes.transport import Authenticator, Security, check_bind, default_context, new_node_id
from recon.types import Frame
from recon.utils.log import WarnOnce
from recon.utils.threads import limit_native_threads, native_threads

logger = logging.getLogger(__name__)

DEFAULT_MAX_BUFFERED_BYTES = 1 << 30


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
        publish: XPUB endpoint results go out on.
        control: REP endpoint for status/reset/shutdown (default: derived from `bind`).
        backend: registry name; `backend_options` are passed to create_backend.
        queue_size: bounded frames per recorded stream, and the credit window granted to its camera.
        heartbeat_s: heartbeat period on the XPUB socket.
        points_dtype, stride, with_image: how results are encoded (see protocol.encode_result).
        max_streams: sessions beyond this are refused (the camera is told, and exits with an error).
        max_streams_per_peer: streams one sender (CURVE key, remote address or connection) may hold.
        owner_timeout_s: a stream's owner silent this long may be replaced by another sender (not under CURVE).
        session_idle_s: a session without frames for this long is checkpointed, flushed and closed, freeing its slot.
        min_subscribers: grant cameras no credit until this many result subscribers are connected (a recorded
            replay waits for its recorder instead of publishing into the void).
        allow_remote: permit binds reachable beyond this user on this machine (non-loopback tcp, shared ipc).
        limits: message limits (`P.Limits.for_pixels` sizes them for an image size).
        max_buffered_bytes: one node-wide budget of decoded frame bytes held between receipt and the end of the
            backend step (queues, decoding, stepping).
        state_dir: checkpoint folder (None: no checkpoints); checkpoint_every: frames between checkpoints;
            state_max_age_s: older checkpoints are not restored at start (None: any age).
        result_hwm: results queued per subscriber before publishing waits for it.
        warmup: build one backend at start and step it on a synthetic frame, so the first camera does not wait
            for imports and first-call initialisation.
        native_threads: threads per call of OpenCV and BLAS, set process-wide at start (recon.utils.threads:
            the sessions are the node's parallelism); None leaves the libraries as they are (in-process use).
        backend_instance: an already built backend for the first stream (in-process replay hands over its own,
            so its stats stay with the caller); further streams are refused.
        strict: a backend exception stops the node (`ReconNode.failure`) instead of being counted and skipped.
        frame_hook: called with each decoded frame (in-process runs use it to re-attach `Frame.meta`, which is
            not part of the wire format).
        batch_window_ms: batch streams (recon.nodes.scheduler): every tick, the streams with a pending frame step
            in one model call, waiting at most this long for each other; streams share one model per backend
            configuration. None: every session steps alone on its own model (the default).
        batch_deadline_ms: per-frame deadline of the batch scheduler (None: only the window).
        kv_memory_bytes: one arena of fixed pages for every session's KV caches (recon.memory.offload.KVPagePool
            over recon.memory.paged.KVArena, allocated once): idle sessions (`kv_idle_s`) and, to make room, the
            least recently used ones move to host memory and back on their next frame. None: no arena, each
            session keeps its own caches, nothing offloaded.
        restore_at_start: start a session for every checkpoint in `state_dir` at start (one node owning its
            folder); False: a stream's session restores its checkpoint when the stream arrives (workers of
            `recon serve --ray` share one folder, and each serves only the streams placed on it).
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
    max_streams_per_peer: int = 4
    owner_timeout_s: float = 5.0
    min_subscribers: int = 0
    session_idle_s: float = 60.0
    allow_remote: bool = False
    limits: P.Limits = P.DEFAULT_LIMITS
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    state_dir: str | None = None
    checkpoint_every: int = 30
    state_max_age_s: float | None = 3600.0
    result_hwm: int = 64
    warmup: bool = False
    native_threads: int | None = None
    security: Security = field(default_factory=Security)
    backend_instance: Backend | None = None
    strict: bool = False
    frame_hook: Callable[[Frame], None] | None = None
    batch_window_ms: float | None = None
    batch_deadline_ms: float | None = None
    kv_memory_bytes: int | None = None
    kv_idle_s: float = 30.0
    restore_at_start: bool = True

    def __post_init__(self) -> None:
        if self.points_dtype not in ("f2", "f4"):
            raise ConfigError(f"points_dtype must be f2 or f4, got {self.points_dtype!r}")
        if self.max_buffered_bytes < self.limits.max_message_bytes:
            raise ConfigError(f"max_buffered_bytes ({self.max_buffered_bytes}) must hold at least one message of "
                              f"max_message_bytes ({self.limits.max_message_bytes})")
        if self.control is None:
            self.control = derive_control(self.bind)

    def session_options(self) -> SessionOptions:
        opts = SessionOptions(
            backend=self.backend, backend_options=dict(self.backend_options), queue_size=self.queue_size,
            points_dtype=self.points_dtype, stride=self.stride, with_image=self.with_image, strict=self.strict,
            frame_hook=self.frame_hook, checkpoint_every=self.checkpoint_every, curve=self.security.enabled,
            owner_timeout_s=self.owner_timeout_s, max_streams=self.max_streams,
            max_streams_per_peer=self.max_streams_per_peer, session_idle_s=self.session_idle_s,
            state_max_age_s=self.state_max_age_s)
        check_options(opts)
        return opts


def warm_backend(name: str, options: dict[str, Any]) -> Backend:
    """A backend of `name` that has stepped on synthetic frames (without and with depth, so both code paths are
    imported and initialised) and been reset, so the first session does not pay for that while cameras wait."""
    backend = create_backend(name, **options)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    K = np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    for depth in (None, np.full((96, 128), 2.0, np.float32)):
        try:
            backend.step(Frame("warmup", 0, 0, image, K=K, depth=depth))
            backend.flush()
        except Exception as e:  # noqa: BLE001 - a warm-up failure is only a missed optimisation
            logger.info("backend %s: warm-up step failed (%s); the first session initialises it", name, e)
        backend.reset()
    return backend


class ReconNode:
    """The reconstruction node; `start()` binds and serves, `stop()` drains, flushes and closes."""

    def __init__(self, config: ReconNodeConfig, context: zmq.Context | None = None) -> None:
        if config.backend_instance is None and config.backend not in registered():
            raise ConfigError(f"unknown backend {config.backend!r}; known: {', '.join(sorted(registered()))}")
        for ep in (config.bind, config.publish, config.control or ""):
            check_bind(ep, config.allow_remote)
        self.config = config
        self.options = config.session_options()
        self.ctx = context or default_context()
        self.node_id = new_node_id()
        self.faults = WarnOnce(logger)  # node faults (overflow, backend errors, refusals)
        self.rejects = WarnOnce(logger)  # malformed messages, by kind
        self.failure: BaseException | None = None
        self.started_at = time.time()
        self._aborting = threading.Event()
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._auth: Authenticator | None = None
        self.results_lost = 0
        self.store = CheckpointStore(config.state_dir) if config.state_dir else None
        self.writer: CheckpointWriter | None = None
        self.budget = MemoryBudget(config.max_buffered_bytes)
        self.publisher: Publisher | None = None
        self.ingest: Ingest | None = None
        self.control: ControlServer | None = None
        self.table: SessionTable | None = None
        self.scheduler: Any = None  # recon.nodes.scheduler.BatchScheduler with batch_window_ms
        self.kv_pool: Any = None  # recon.memory.offload.KVPagePool with kv_memory_bytes
        self.replies: Replies | None = None

    def __str__(self) -> str:
        return f"ReconNode({self.config.bind})"

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> ReconNode:
        """Bind every socket (errors are raised here), restore checkpointed sessions, start serving."""
        cfg = self.config
        self._auth = Authenticator(self.ctx, cfg.security)
        spare = None
        if cfg.native_threads is not None:
            limit_native_threads(cfg.native_threads)
        if cfg.warmup and cfg.backend_instance is None:
            spare = warm_backend(cfg.backend, cfg.backend_options)
        self.publisher = Publisher(self.ctx, cfg.publish, node_id=self.node_id, heartbeat_s=cfg.heartbeat_s,
                                   limits=cfg.limits, security=cfg.security, hwm=cfg.result_hwm,
                                   min_subscribers=cfg.min_subscribers)
        replies = Replies(self.node_id, cfg.limits.max_message_bytes)
        if self.store is not None:
            self.writer = CheckpointWriter(self.store)
        services = SessionServices(self.options, self.publisher, replies, self.budget, self.faults, self.rejects,
                                   self.fail, self._aborting, self.store, self.writer)
        if cfg.batch_window_ms is not None:
            from recon.backends import create_backend
            from recon.nodes.scheduler import BatchScheduler, SchedulerConfig, SharedBackends

            self.scheduler = BatchScheduler(SchedulerConfig(window_ms=cfg.batch_window_ms,
                                                            deadline_ms=cfg.batch_deadline_ms)).start()
            services.scheduler, services.backend_factory = self.scheduler, SharedBackends(create_backend)
        if cfg.kv_memory_bytes is not None:
            import torch

            from recon.memory.offload import KVPagePool

            wanted = str(cfg.backend_options.get("device", "auto"))
            device = ("cuda" if torch.cuda.is_available() else "cpu") if wanted == "auto" else wanted
            self.kv_pool = KVPagePool(cfg.kv_memory_bytes, device, idle_s=cfg.kv_idle_s)
            services.kv_pool = self.kv_pool
        self.table = SessionTable(services, spare_backend=spare, only_backend=cfg.backend_instance)
        self.replies = replies
        self.ingest = Ingest(self.ctx, cfg.bind, table=self.table, replies=replies, publisher=self.publisher,
                             limits=cfg.limits, security=cfg.security, rejects=self.rejects)
        self.control = ControlServer(self.ctx, cfg.control or "", security=cfg.security, faults=self.faults,
                                     status=self.status, reset=self.table.reset, shutdown=self.stop)
        try:
            self.publisher.bind()
            self.ingest.bind()
            self.control.bind()
        except zmq.ZMQError as e:
            self._close_sockets()
            raise ConfigError(f"{self}: cannot bind its sockets ({cfg.bind}, {cfg.publish}, {cfg.control}): {e}") \
                from e
        if cfg.restore_at_start:
            self.table.restore_all()
        for name, fn in (("ingest", self.ingest.run), ("control", self.control.run)):
            t = threading.Thread(target=self._guard, args=(fn,), name=f"recon-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        logger.info("%s serving: frames %s, results %s, control %s, backend %s, node id %x%s", self, cfg.bind,
                    cfg.publish, cfg.control, cfg.backend, self.node_id,
                    f", checkpoints in {self.store.root} every {cfg.checkpoint_every} frames" if self.store else "")
        return self

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException:  # a dead ingest or control thread stops the node, loudly
            if not self._stop_requested.is_set():
                logger.exception("%s: thread %s died; stopping", self, threading.current_thread().name)
                self._stop_requested.set()

    def _close_sockets(self) -> None:
        for part in (self.publisher, self.replies):
            if part is not None:
                part.close()
        if self._auth is not None:
            self._auth.stop()

    def abort(self) -> None:
        """Cut a stop short (second SIGINT/SIGTERM): sessions abandon their queues and skip the final flush.

        Never blocks (safe in a signal handler); `stop()` then returns as soon as it can and `results_lost` counts
        what was given up."""
        if not self._aborting.is_set():
            logger.warning("%s: forced stop: queued frames and results held by backends are given up", self)
        self._aborting.set()
        self._stop_requested.set()
        if self.table is not None:
            self.table.close_all(force=True)

    def stop(self, timeout: float | None = None) -> int:
        """Stop taking frames, let every session drain, checkpoint, flush and publish, then close; returns the
        number of results lost (0 unless `abort` cut the stop short). `timeout`: abort after that many seconds."""
        with self._stop_lock:
            first, self._stopping = not self._stopping, True
        if not first:
            self._stopped.wait()
            return self.results_lost
        self._stop_requested.set()
        if self.table is None:  # never started
            self._stopped.set()
            return 0
        sessions = self.table.close_all(force=self._aborting.is_set())
        t0 = time.monotonic()
        next_log = t0 + 5.0
        while any(s.alive for s in sessions):
            for s in sessions:
                s.thread.join(0.1)
            if self._aborting.is_set():
                for s in sessions:
                    s.thread.join(1.0)  # give a session thread a moment to notice; a step in progress is not waited
                break
            now = time.monotonic()
            if timeout is not None and now - t0 > timeout:
                logger.error("%s: sessions still flushing after %.0f s; forcing the stop", self, timeout)
                self.abort()
            elif now >= next_log:
                next_log = now + 5.0
                busy = [s for s in sessions if s.alive]
                logger.info("stopping: waiting %.0f s so far for %d session(s) to flush: %s", now - t0, len(busy),
                            ", ".join(f"{s.stream_id} ({len(s.queue)} queued, {len(s._awaiting)} results pending)"
                                      for s in busy[:8]))
        self.results_lost = sum(s.results_lost + (len(s._awaiting) if s.alive else 0) for s in sessions)
        if self.writer is not None:
            if self._aborting.is_set():
                self.writer.wait_idle(timeout=5.0)
            self.writer.close()
        assert self.publisher is not None and self.ingest is not None and self.control is not None
        # Every session is done: say goodbye (after the last result on the same socket), deliver the last acks.
        self.publisher.heartbeat(bye=True, lost=self.results_lost)
        self.ingest.finish()
        self.control.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(10)
        self.publisher.close()
        if self.replies is not None:
            self.replies.close()
        if self._auth is not None:
            self._auth.stop()
        self._stopped.set()
        log = logger.error if self.results_lost else logger.info
        log("%s stopped after %d messages, %d results, %d results lost", self, self.ingest.messages_in,
            self.publisher.results_out, self.results_lost)
        return self.results_lost

    def fail(self, error: BaseException) -> None:
        """Strict mode: remember the first fault and stop taking frames (the owner re-raises `failure`)."""
        if self.failure is None:
            self.failure = error
            logger.error("%s: backend failed (strict): %s: %s", self, type(error).__name__, error)
        self._aborting.set()  # strict: nothing after the fault is processed or flushed
        self._stop_requested.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested (shutdown command, signal, strict failure or a dead thread)."""
        return self._stop_requested.wait(timeout)

    @property
    def running(self) -> bool:
        return not self._stop_requested.is_set()

    @property
    def sessions(self) -> dict[str, Session]:
        """Active sessions by stream id."""
        return dict(self.table.items()) if self.table is not None else {}

    def reset_stream(self, stream_id: str) -> bool:
        return self.table.reset(stream_id) if self.table is not None else False

    # -- status -----------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Snapshot for the control socket: sessions (owners, latency, queues, drops), rejects by kind, refusals,
        memory budget, checkpoints, RSS."""
        import psutil

        assert self.table is not None and self.publisher is not None and self.ingest is not None
        sessions = {sid: s.status() for sid, s in self.table.latest().items()}
        rejected = self.rejects.counts
        every = self.table.all()
        return {"node": self.node_id, "backend": self.config.backend,
                "uptime_s": round(time.time() - self.started_at, 3), "stopping": self._stopping,
                "messages_in": self.ingest.messages_in, "results_out": self.publisher.results_out,
                "results_unheard": self.publisher.unheard, "publish_waits": self.publisher.publish_waits,
                "frames": sum(s.frames for s in every),
                "fps": round(float(np.sum([s["fps"] for s in sessions.values() if s["state"] == "running"])), 2),
                "drops": sum(s.drops for s in every), "results_lost": self.table.results_lost(),
                "result_subscribers": self.publisher.subscribers,
                "rejected": rejected, "rejected_total": int(sum(rejected.values())), "faults": self.faults.counts,
                "refused": dict(self.table.refusals), "not_owner": self.table.not_owner,
                "takeovers": self.table.takeovers, "replies_lost": self.replies.lost if self.replies else 0,
                "budget": self.budget.describe(), "native_threads": native_threads(),
                "limits": {"max_pixels": self.config.limits.max_pixels,
                           "max_message_bytes": self.config.limits.max_message_bytes},
                "checkpoints": self.writer.describe() if self.writer is not None else None,
                "rss_bytes": int(psutil.Process().memory_info().rss), "sessions": sessions,
                "batching": self.scheduler.stats.as_dict() if self.scheduler is not None else None,
                "kv_memory": self.kv_pool.describe() if self.kv_pool is not None else None}
