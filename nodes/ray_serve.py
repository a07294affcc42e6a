"""`recon serve --ray`: many reconstruction workers on a Ray cluster; Ray is the control plane, ZeroMQ the data plane.

- One `ReconWorker` actor per GPU (`num_gpus=1`; on a cluster without GPUs, one per `--workers`, `num_cpus=1`),
  each running the ordinary reconstruction node (recon.nodes.recon_node) on its own ZeroMQ endpoints, with its
  checkpoints in one folder every worker shares (`--state-dir`, on a shared file system across machines). A
  worker restores a stream's checkpoint when the stream arrives, not every checkpoint at start.
- The `Directory` (in the driver) places each new stream on the least-loaded live worker and pings the workers
  every `health_s`. A worker Ray reports dead, or whose node failed, is dropped at once; one that is only slow
  (a busy machine) is dropped when its ping has gone unanswered for `dead_after_s`, and is then killed, so it can
  neither keep serving the streams that moved nor hold on to its CPU/GPU. Its streams are re-placed, and
  (`replace_dead`) a new worker is started in its place, which takes new streams; the health loop polls that
  start (and retries a failed one) without waiting for it.
- Scaling (`Scaling`, `--min-workers/--max-workers`): the service starts `min_workers` and, while the streams
  placed per live worker exceed `streams_per_worker`, starts one more (up to `max_workers`: the GPUs, or a
  configured maximum on CPU), which takes the next new streams (least loaded; running streams stay where they
  are). A worker whose streams have all ended (no session on it, none placed) for `idle_grace_s` is retired, down
  to `min_workers` and only while the other workers stay within the threshold (no start-retire flapping): it
  stops taking streams first, and is stopped like a node (its sessions drained and checkpointed), so no stream
  is ever moved without its checkpoint; a camera that comes back later is placed anew and its worker restores
  the checkpoint from the shared folder.
- The front endpoint (recon.nodes.front) answers cameras' "where does stream S live"; a camera that lost its
  worker asks again, is redirected, and re-sends its unacknowledged frames (and the acknowledged ones after the
  last checkpoint) to the new worker, whose session restores the checkpoint and catches up: every frame reaches
  subscribers once (they drop re-computed duplicates by (stream, epoch, seq)), in the same world frame.

Ray is imported only here, and only when this runs (`pip install recon[serve]`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from recon.errors import ConfigError, ReconError
from recon.nodes.recon_node import ReconNodeConfig

PING_TIMEOUT_S = 1.0
"""How long one health ping waits for its answer; a worker is declared dead only after `dead_after_s` of them."""

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_dead_after(dead_after_s: float, ping_timeout_s: float = PING_TIMEOUT_S) -> None:
    """Refuse a silence limit shorter than one ping's timeout (ConfigError): no worker could ever answer in time."""
    if dead_after_s < ping_timeout_s:
        raise ConfigError(f"--dead-after {dead_after_s:g} s is shorter than one health ping's timeout "
                          f"({ping_timeout_s:g} s)")


class ReconWorker:
    """A reconstruction node in a Ray actor (wrapped with `ray.remote` by `worker_class`)."""

    def __init__(self, index: int, config: ReconNodeConfig, host: str | None = None) -> None:
        import ray

        from recon.nodes.pipeline import free_port
        from recon.nodes.recon_node import ReconNode
        from recon.utils.log import setup_logging

        setup_logging(None)
        host = host or ray.util.get_node_ip_address()
        if host not in LOOPBACK and not config.allow_remote:
            logger.warning("worker %d: node address %s is beyond loopback and --allow-remote is not set; binding "
                           "127.0.0.1 (cameras on other machines cannot reach it)", index, host)
            host = "127.0.0.1"
        ports = [free_port(host) for _ in range(3)]
        self.index = index
        cfg = dataclasses.replace(config, bind=f"tcp://{host}:{ports[0]}", publish=f"tcp://{host}:{ports[1]}",
                                  control=f"tcp://{host}:{ports[2]}", restore_at_start=False)
        self.node = ReconNode(cfg).start()

    def endpoints(self) -> dict[str, Any]:
        cfg = self.node.config
        return {"worker": self.index, "connect": cfg.bind, "publish": cfg.publish, "control": cfg.control}

    def ping(self) -> dict[str, Any]:
        """Alive, and how busy: the streams with an open session (what scaling reads), sessions so far."""
        assert self.node.table is not None
        return {"worker": self.index, "sessions": len(self.node.table.all()),
                "streams": sorted(sid for sid, _ in self.node.table.items()),
                "failure": repr(self.node.failure) if self.node.failure is not None else None}

    def stop(self) -> int:
        return self.node.stop()


def worker_class(gpus: bool) -> Any:
    """The actor class: one GPU each when the cluster has GPUs, else one CPU."""
    import ray

    return ray.remote(num_gpus=1, num_cpus=0)(ReconWorker) if gpus else ray.remote(num_cpus=1)(ReconWorker)


@dataclass
class Scaling:
    """How the number of workers follows the number of streams (see the module docstring).

    Args:
        min_workers: workers started, and kept however idle.
        max_workers: at most this many (capped at the GPUs on a GPU cluster).
        streams_per_worker: one more worker once the streams placed per live worker exceed this.
        idle_grace_s: a worker without streams this long is retired (above `min_workers`).
    """

    min_workers: int = 1
    max_workers: int = 1
    streams_per_worker: float = 4.0
    idle_grace_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise ConfigError(f"scaling: need 1 <= min workers ({self.min_workers}) <= max workers "
                              f"({self.max_workers})")
        if not self.streams_per_worker > 0 or self.idle_grace_s < 0:
            raise ConfigError(f"scaling: streams per worker must be > 0 and the grace period >= 0, got "
                              f"{self.streams_per_worker}, {self.idle_grace_s}")


@dataclass
class WorkerEntry:
    index: int
    actor: Any
    endpoints: dict[str, Any]
    alive: bool = True
    streams: set[str] = field(default_factory=set)  # placed here by the directory
    sessions: set[str] = field(default_factory=set)  # open sessions the worker reported at the last check
    idle_since: float | None = None  # monotonic time since when it has neither (None: busy)
    retiring: bool = False  # takes no new streams; stopped by the scaler (never replaced)
    placed_at: dict[str, float] = field(default_factory=dict)
    ping: Any = None  # the ping in flight (one at a time: a slow worker's pings do not pile up)
    ping_sent: float = 0.0  # monotonic time it was sent


@dataclass
class WorkerStart:
    """A worker actor being started, polled by the health loop (so no health check waits for a start)."""

    index: int
    actor: Any
    ref: Any  # its `endpoints()` call
    since: float

    @classmethod
    def begin(cls, actor_class: Any, index: int, config: ReconNodeConfig) -> WorkerStart:
        actor = actor_class.remote(index, config)
        return cls(index, actor, actor.endpoints.remote(), time.monotonic())

    def poll(self, timeout_s: float) -> tuple[str, dict[str, Any] | None]:
        """("ready", endpoints), ("pending", None), or ("failed", None) after an error or `timeout_s` (the
        actor is then killed: it would hold a CPU/GPU that the next try needs)."""
        import ray

        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            if time.monotonic() - self.since < timeout_s:
                return "pending", None
            logger.error("worker %d did not start within %.0f s", self.index, timeout_s)
        else:
            try:
                return "ready", ray.get(self.ref, timeout=0)
            except ray.exceptions.RayError as e:
                logger.error("worker %d failed to start: %s", self.index, e)
        ray.kill(self.actor)
        return "failed", None


class Directory:
    """Stream placement over the workers, their health checks, and re-placement of a dead worker's streams."""

    def __init__(self, ping_timeout_s: float = PING_TIMEOUT_S, stream_grace_s: float | None = None,
                 dead_after_s: float = 10.0) -> None:
        check_dead_after(dead_after_s, ping_timeout_s)
        self.ping_timeout_s = ping_timeout_s
        self.dead_after_s = dead_after_s
        # A placed stream without a session on its worker for this long has ended (None: placements stay).
        self.stream_grace_s = stream_grace_s
        self.workers: list[WorkerEntry] = []
        self.placement: dict[str, WorkerEntry] = {}
        self.moves: list[dict[str, Any]] = []  # {"stream", "from", "to", "t"}: re-placements, for status and tests
        self._lock = threading.RLock()

    def add(self, actor: Any, endpoints: dict[str, Any]) -> WorkerEntry:
        with self._lock:
            entry = WorkerEntry(int(endpoints["worker"]), actor, endpoints)
            self.workers.append(entry)
            return entry

    def live(self) -> list[WorkerEntry]:
        """Workers that take streams (alive, not retiring)."""
        with self._lock:
            return [w for w in self.workers if w.alive and not w.retiring]

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**w.endpoints, "alive": w.alive, "retiring": w.retiring, "streams": sorted(w.streams)}
                    for w in self.workers]

    def where(self, stream_id: str, lost: str | None = None) -> dict[str, Any]:
        """The worker of `stream_id` (placing it on the least-loaded live worker when it has none); a camera that
        `lost` its worker's endpoint has that worker checked now."""
        with self._lock:
            entry = self.placement.get(stream_id)
        if entry is not None and entry.alive and lost == entry.endpoints["connect"]:
            self.check([entry])
        with self._lock:
            entry = self.placement.get(stream_id)
            if entry is None or not entry.alive:
                entry = self._place(stream_id)
            return dict(entry.endpoints)

    def _place(self, stream_id: str) -> WorkerEntry:
        live = [w for w in self.workers if w.alive and not w.retiring]
        if not live:
            raise ReconError("no live reconstruction worker")
        entry = min(live, key=lambda w: (len(w.streams), w.index))
        old = self.placement.get(stream_id)
        if old is not None:
            old.streams.discard(stream_id)
        entry.streams.add(stream_id)
        entry.placed_at[stream_id] = time.monotonic()
        entry.idle_since = None
        self.placement[stream_id] = entry
        logger.info("stream %s placed on worker %d (%s)", stream_id, entry.index, entry.endpoints["connect"])
        return entry

    def check(self, entries: list[WorkerEntry] | None = None) -> list[int]:
        """Ping `entries` (default: every live worker) at once and wait up to the ping timeout. A worker Ray reports
        dead, or whose node failed, is dropped; one whose ping is unanswered for `dead_after_s` is dropped and
        killed (a slow answer alone is not death on a busy machine). Returns the dropped workers' indices."""
        import ray

        entries = [w for w in (entries if entries is not None else self.live()) if w.alive]
        now = time.monotonic()
        with self._lock:  # the health loop and the front (a camera's `lost`) both check
            for w in entries:
                if w.ping is None:
                    w.ping, w.ping_sent = w.actor.ping.remote(), now
        dead, fenced = [], []
        deadline = now + self.ping_timeout_s
        for w in entries:
            try:
                reply = ray.get(w.ping, timeout=max(0.0, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                waited = time.monotonic() - w.ping_sent
                if waited >= self.dead_after_s:
                    logger.error("worker %d (%s) is gone: no answer for %.1f s", w.index, w.endpoints["connect"],
                                 waited)
                    dead.append(w)
                    fenced.append(w)
                elif waited >= 2 * self.ping_timeout_s:
                    logger.warning("worker %d (%s) has not answered for %.1f s (dropped after %.0f s)", w.index,
                                   w.endpoints["connect"], waited, self.dead_after_s)
                continue
            except ray.exceptions.RayError as e:
                logger.error("worker %d (%s) is gone: %s", w.index, w.endpoints["connect"], e)
                dead.append(w)
                continue
            with self._lock:
                w.ping = None
            if reply.get("failure"):
                logger.error("worker %d (%s) is gone: node failed: %s", w.index, w.endpoints["connect"],
                             reply["failure"])
                dead.append(w)
                fenced.append(w)
                continue
            self._note_sessions(w, set(reply.get("streams", ())))
        for w in fenced:  # alive for Ray: kill it: its streams move now, so it must not go on serving them
            ray.kill(w.actor)
        self.drop(dead)
        return [w.index for w in dead]

    def _note_sessions(self, w: WorkerEntry, sessions: set[str]) -> None:
        """A worker's open sessions: placements that never got (or no longer have) a session within the grace
        period have ended and are released; a worker with neither streams nor sessions starts its idle time."""
        now = time.monotonic()
        with self._lock:
            w.sessions = sessions
            if self.stream_grace_s is not None:
                for sid in [s for s in w.streams if s not in sessions
                            and now - w.placed_at.get(s, now) >= self.stream_grace_s]:
                    w.streams.discard(sid)
                    w.placed_at.pop(sid, None)
                    if self.placement.get(sid) is w:
                        del self.placement[sid]
                    logger.info("stream %s ended on worker %d (no session for %.1f s)", sid, w.index,
                                self.stream_grace_s)
                for sid in sessions & w.streams:
                    w.placed_at[sid] = now  # the grace counts from the session's last sighting
            if w.streams or sessions:
                w.idle_since = None
            elif w.idle_since is None:
                w.idle_since = now

    def retire(self, w: WorkerEntry) -> bool:
        """Stop placing streams on `w` if it has none (True); a worker with streams is kept (False)."""
        with self._lock:
            if w.streams or w.sessions or not w.alive or w.retiring:
                return False
            w.retiring = True
            return True

    def retired(self, w: WorkerEntry) -> None:
        """A retiring worker has stopped (it had no streams to move)."""
        with self._lock:
            w.alive = False

    def drop(self, dead: list[WorkerEntry]) -> None:
        """Mark `dead` workers gone and move each of their streams to the least-loaded live worker."""
        with self._lock:
            for w in dead:
                if not w.alive:
                    continue
                w.alive = False
                for sid in sorted(w.streams):
                    to = self._place(sid) if any(x.alive and not x.retiring for x in self.workers) else None
                    self.moves.append({"stream": sid, "from": w.index, "to": None if to is None else to.index,
                                       "t": time.time()})
                    logger.warning("stream %s moved from dead worker %d to %s", sid, w.index,
                                   "no worker" if to is None else f"worker {to.index}")
                w.streams.clear()


class RayService:
    """The workers, the directory, its health checks and the front endpoint; `start()`, then `stop()`."""

    def __init__(self, config: ReconNodeConfig, front: str, *, workers: int | None = None, health_s: float = 0.5,
                 ping_timeout_s: float = PING_TIMEOUT_S, dead_after_s: float = 10.0, replace_dead: bool = True,
                 scaling: Scaling | None = None, start_timeout_s: float = 120.0) -> None:
        if config.state_dir is None:
            raise ConfigError("recon serve --ray needs a --state-dir every worker can read (streams move between "
                              "workers through their checkpoints)")
        if scaling is not None and workers is not None:
            raise ConfigError("give either a fixed number of workers or a scaling range (--min/--max-workers)")
        self.config = config
        self.scaling = scaling
        self.max_workers = scaling.max_workers if scaling is not None else 0
        self.scale_events: list[dict[str, Any]] = []  # {"event": "up"|"down", "worker", "streams", "t"}
        self._starting: WorkerStart | None = None  # a scale-up in progress
        self._replacing: dict[int, WorkerStart] = {}  # dead worker's index -> its replacement starting
        self._replaced: set[int] = set()  # dead workers that have their replacement
        self.start_timeout_s = start_timeout_s
        self.front_endpoint = front
        self.num_workers = workers
        self.health_s = health_s
        self.replace_dead = replace_dead
        self.replacements = 0
        self._cls: Any = None
        self._next_index = 0
        self.directory = Directory(ping_timeout_s, scaling.idle_grace_s if scaling is not None else None,
                                   dead_after_s)
        self.front: Any = None
        self.ctx: Any = None
        self._stop = threading.Event()
        self._health: threading.Thread | None = None

    def start(self) -> RayService:
        import ray

        from recon.nodes.front import FrontServer
        from recon.nodes.transport import default_context

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = self.num_workers or gpus or max(1, int(resources.get("CPU", 1)))
        if self.num_workers and gpus and self.num_workers > gpus:
            raise ConfigError(f"--workers {self.num_workers}: the cluster has {gpus} GPU(s), one worker each")
        if self.scaling is not None:
            count = self.scaling.min_workers
            if gpus and count > gpus:
                raise ConfigError(f"--min-workers {count}: the cluster has {gpus} GPU(s), one worker each")
            self.max_workers = min(self.scaling.max_workers, gpus) if gpus else self.scaling.max_workers
        self._cls = worker_class(gpus > 0)
        actors = [self._cls.remote(i, self.config) for i in range(count)]
        self._next_index = count
        for actor, ends in zip(actors, ray.get([a.endpoints.remote() for a in actors]), strict=True):
            self.directory.add(actor, ends)
        logger.info("%d reconstruction worker(s) (%s): %s", count, "one GPU each" if gpus else "CPU",
                    ", ".join(w.endpoints["connect"] for w in self.directory.workers))
        self.ctx = default_context()
        self.front = FrontServer(self.ctx, self.front_endpoint, where=self.directory.where,
                                 workers=self.directory.describe, security=self.config.security).start()
        self._health = threading.Thread(target=self._check_health, name="recon-health", daemon=True)
        self._health.start()
        return self

    def _check_health(self) -> None:
        while not self._stop.wait(self.health_s):
            try:
                self.directory.check()
                if self.replace_dead:
                    self._replace_dead()
                if self.scaling is not None:
                    self._scale()
            except Exception:  # noqa: BLE001 - the health loop must outlive one bad check
                logger.exception("health check failed")

    def _scale(self) -> None:
        """One scaling decision per health check: finish a pending start, else add a worker when the streams per
        worker exceed the threshold, else retire the worker idle the longest (past the grace period) if the others
        stay within the threshold without it."""
        assert self.scaling is not None
        now = time.monotonic()
        if self._starting is not None:
            state, ends = self._starting.poll(self.start_timeout_s)
            if state == "pending":
                return
            start, self._starting = self._starting, None
            if ends is not None:
                self.directory.add(start.actor, ends)
                self.scale_events.append({"event": "up", "worker": start.index, "t": time.time()})
                logger.info("worker %d added (%s): %d workers", start.index, ends["connect"],
                            len(self.directory.live()))
            return
        live = self.directory.live()
        streams = sum(len(w.streams) for w in live)
        if len(live) < self.max_workers and streams > self.scaling.streams_per_worker * len(live):
            self._starting = self._begin_worker()
            logger.info("%d streams on %d worker(s) (> %g each): starting worker %d", streams, len(live),
                        self.scaling.streams_per_worker, self._starting.index)
            return
        if len(live) <= self.scaling.min_workers or streams > self.scaling.streams_per_worker * (len(live) - 1):
            return  # at the minimum, or the others would be over the threshold (and one would start again)
        idle = [w for w in live if w.idle_since is not None and now - w.idle_since >= self.scaling.idle_grace_s]
        if idle:
            w = min(idle, key=lambda x: (x.idle_since, -x.index))  # idle the longest
            if self.directory.retire(w):
                self._retire(w)

    def _retire(self, w: WorkerEntry) -> None:
        """Stop a worker that takes no streams any more: its node drains (sessions checkpointed), then it goes."""
        import ray

        try:
            lost = int(ray.get(w.actor.stop.remote(), timeout=120))
        except ray.exceptions.RayError as e:
            logger.error("retiring worker %d: it did not stop cleanly: %s", w.index, e)
            lost = -1
        ray.kill(w.actor)
        self.directory.retired(w)
        self.scale_events.append({"event": "down", "worker": w.index, "lost": lost, "t": time.time()})
        logger.info("worker %d retired (idle for %.0f s): %d workers", w.index, self.scaling.idle_grace_s
                    if self.scaling else 0, len(self.directory.live()))

    def _begin_worker(self) -> WorkerStart:
        """Start the next-numbered worker actor (polled by the health loop until it is up)."""
        index, self._next_index = self._next_index, self._next_index + 1
        return WorkerStart.begin(self._cls, index, self.config)

    def _replace_dead(self) -> None:
        """Start a new worker for each dead one (Ray places it where a GPU/CPU is free) and add those that are up;
        a start that fails or times out is tried again at the next check. The dead worker's streams already
        moved; the new worker takes new streams (least loaded). Subscribers find it with the front's `workers`."""
        for w in [w for w in self.directory.workers
                  if not w.alive and not w.retiring and w.index not in self._replaced]:
            start = self._replacing.get(w.index)
            if start is None:
                start = self._replacing[w.index] = self._begin_worker()
                logger.info("starting worker %d to replace dead worker %d", start.index, w.index)
                continue
            state, ends = start.poll(self.start_timeout_s)
            if state == "pending":
                continue
            del self._replacing[w.index]  # failed: the next check starts another
            if ends is not None:
                self.directory.add(start.actor, ends)
                self._replaced.add(w.index)
                self.replacements += 1
                logger.info("worker %d replaces dead worker %d (%s)", start.index, w.index, ends["connect"])

    def stop(self) -> int:
        """Stop the front and the health checks, then every live worker (draining its sessions); results lost."""
        import ray

        self._stop.set()
        if self._health is not None:
            self._health.join(5)
        if self.front is not None:
            self.front.stop()
        lost = 0
        for start in [*self._replacing.values(), *([self._starting] if self._starting is not None else [])]:
            ray.kill(start.actor)
        self._starting, self._replacing = None, {}
        live = self.directory.live()
        for w, got in zip(live, [w.actor.stop.remote() for w in live], strict=True):
            try:
                lost += int(ray.get(got, timeout=120))
            except ray.exceptions.RayError as e:
                logger.error("worker %d did not stop cleanly: %s", w.index, e)
        return lost
