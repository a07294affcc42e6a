"""`recon serve --ray`: many reconstruction workers on a Ray cluster; Ray is the control plane, ZeroMQ the data plane.

- One `ReconWorker` actor per GPU (`num_gpus=1`; on a cluster without GPUs, one per `--workers`, `num_cpus=1`),
  each running the ordinary reconstruction node (recon.nodes.recon_node) on its own ZeroMQ endpoints, with its
  checkpoints in one folder every worker shares (`--state-dir`, on a shared file system across machines). A
  worker restores a stream's checkpoint when the stream arrives, not every checkpoint at start.
- The `Directory` (in the driver) places each new stream on the least-loaded live worker and pings the workers
  every `health_s`; a worker that does not answer, or that Ray reports dead, is dropped and its streams re-placed,
  and (`replace_dead`) a new worker is started in its place, which takes new streams.
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

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
        """Alive, and how busy: sessions and frames so far."""
        assert self.node.table is not None
        return {"worker": self.index, "sessions": len(self.node.table.all()), "failure": repr(self.node.failure)
                if self.node.failure is not None else None}

    def stop(self) -> int:
        return self.node.stop()


def worker_class(gpus: bool) -> Any:
    """The actor class: one GPU each when the cluster has GPUs, else one CPU."""
    import ray

    return ray.remote(num_gpus=1, num_cpus=0)(ReconWorker) if gpus else ray.remote(num_cpus=1)(ReconWorker)


@dataclass
class WorkerEntry:
    index: int
    actor: Any
    endpoints: dict[str, Any]
    alive: bool = True
    streams: set[str] = field(default_factory=set)


class Directory:
    """Stream placement over the workers, their health checks, and re-placement of a dead worker's streams."""

    def __init__(self, ping_timeout_s: float = 1.0) -> None:
        self.ping_timeout_s = ping_timeout_s
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
        with self._lock:
            return [w for w in self.workers if w.alive]

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**w.endpoints, "alive": w.alive, "streams": sorted(w.streams)} for w in self.workers]

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
        live = [w for w in self.workers if w.alive]
        if not live:
            raise ReconError("no live reconstruction worker")
        entry = min(live, key=lambda w: (len(w.streams), w.index))
        old = self.placement.get(stream_id)
        if old is not None:
            old.streams.discard(stream_id)
        entry.streams.add(stream_id)
        self.placement[stream_id] = entry
        logger.info("stream %s placed on worker %d (%s)", stream_id, entry.index, entry.endpoints["connect"])
        return entry

    def check(self, entries: list[WorkerEntry] | None = None) -> list[int]:
        """Ping `entries` (default: every live worker) at once; those that do not answer within the timeout, or
        that Ray reports dead, are dropped and their streams re-placed. Returns the dropped workers' indices."""
        import ray

        entries = [w for w in (entries if entries is not None else self.live()) if w.alive]
        refs = {w.index: w.actor.ping.remote() for w in entries}
        dead = []
        deadline = time.monotonic() + self.ping_timeout_s
        for w in entries:
            try:
                reply = ray.get(refs[w.index], timeout=max(0.0, deadline - time.monotonic()))
                if reply.get("failure"):
                    raise ReconError(f"node failed: {reply['failure']}")
            except (ray.exceptions.RayError, ReconError) as e:
                dead.append(w)
                logger.error("worker %d (%s) is gone: %s", w.index, w.endpoints["connect"],
                             type(e).__name__ if isinstance(e, ray.exceptions.GetTimeoutError) else e)
        self.drop(dead)
        return [w.index for w in dead]

    def drop(self, dead: list[WorkerEntry]) -> None:
        """Mark `dead` workers gone and move each of their streams to the least-loaded live worker."""
        with self._lock:
            for w in dead:
                if not w.alive:
                    continue
                w.alive = False
                for sid in sorted(w.streams):
                    to = self._place(sid) if any(x.alive for x in self.workers) else None
                    self.moves.append({"stream": sid, "from": w.index, "to": None if to is None else to.index,
                                       "t": time.time()})
                    logger.warning("stream %s moved from dead worker %d to %s", sid, w.index,
                                   "no worker" if to is None else f"worker {to.index}")
                w.streams.clear()


class RayService:
    """The workers, the directory, its health checks and the front endpoint; `start()`, then `stop()`."""

    def __init__(self, config: ReconNodeConfig, front: str, *, workers: int | None = None, health_s: float = 0.5,
                 ping_timeout_s: float = 1.0, replace_dead: bool = True) -> None:
        if config.state_dir is None:
            raise ConfigError("recon serve --ray needs a --state-dir every worker can read (streams move between "
                              "workers through their checkpoints)")
        self.config = config
        self.front_endpoint = front
        self.num_workers = workers
        self.health_s = health_s
        self.replace_dead = replace_dead
        self.replacements = 0
        self._cls: Any = None
        self._next_index = 0
        self.directory = Directory(ping_timeout_s)
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
        replaced: set[int] = set()
        while not self._stop.wait(self.health_s):
            try:
                self.directory.check()
                if self.replace_dead:
                    for w in [w for w in self.directory.workers if not w.alive and w.index not in replaced]:
                        replaced.add(w.index)
                        self._replace(w.index)
            except Exception:  # noqa: BLE001 - the health loop must outlive one bad check
                logger.exception("health check failed")

    def _replace(self, dead: int) -> None:
        """Start a new worker for a dead one (Ray places it where a GPU/CPU is free). Its streams already moved;
        the new worker takes new streams (least loaded). Subscribers find it with the front's `workers`."""
        import ray

        index, self._next_index = self._next_index, self._next_index + 1
        actor = self._cls.remote(index, self.config)
        try:
            ends = ray.get(actor.endpoints.remote(), timeout=120)
        except ray.exceptions.RayError as e:
            logger.error("replacement of worker %d failed: %s", dead, e)
            ray.kill(actor)
            return
        self.directory.add(actor, ends)
        self.replacements += 1
        logger.info("worker %d replaces dead worker %d (%s)", index, dead, ends["connect"])

    def stop(self) -> int:
        """Stop the front and the health checks, then every live worker (draining its sessions); results lost."""
        import ray

        self._stop.set()
        if self._health is not None:
            self._health.join(5)
        if self.front is not None:
            self.front.stop()
        lost = 0
        live = self.directory.live()
        for w, got in zip(live, [w.actor.stop.remote() for w in live], strict=True):
            try:
                lost += int(ray.get(got, timeout=120))
            except ray.exceptions.RayError as e:
                logger.error("worker %d did not stop cleanly: %s", w.index, e)
        return lost
