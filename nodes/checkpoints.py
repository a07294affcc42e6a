"""The node's checkpoint writer: one thread that writes session checkpoints off the session threads.

A session takes its snapshot between two backend steps (`recon.checkpoint.backend_state`, a copy of the state)
and hands it here; the write (safetensors + manifest, fsynced, renamed) happens on this thread, so a stream only
pays for the copy. Per stream the newest snapshot wins: a write still pending when a newer one arrives is
replaced. Before committing, the writer waits (bounded) until ZeroMQ has sent the results of the last frame in
the snapshot, so a checkpoint never claims a frame whose result could still die with the process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recon.checkpoint import CheckpointStore, SessionCheckpoint
from recon.errors import StateError

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    ckpt: SessionCheckpoint
    tracker: Any
    on_done: Callable[[bool], None]


class CheckpointWriter:
    """Writes `SessionCheckpoint`s to `store` on its own thread (newest per stream wins)."""

    def __init__(self, store: CheckpointStore, tracker_wait_s: float = 2.0) -> None:
        self.store = store
        self.tracker_wait_s = tracker_wait_s
        self.writes = 0
        self.failures = 0
        self.bytes_written = 0
        self.last_write_s = 0.0
        self._pending: dict[str, _Job] = {}
        self._busy: set[str] = set()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="recon-checkpoints", daemon=True)
        self._thread.start()

    def submit(self, ckpt: SessionCheckpoint, on_done: Callable[[bool], None], tracker: Any = None) -> None:
        with self._cond:
            replaced = self._pending.get(ckpt.stream_id)
            if replaced is not None:
                replaced.on_done(False)
            self._pending[ckpt.stream_id] = _Job(ckpt, tracker, on_done)
            self._cond.notify_all()

    def wait_idle(self, stream_id: str | None = None, timeout: float | None = None) -> bool:
        """Wait until nothing is pending or being written (for `stream_id`, or at all)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (stream_id in self._pending or stream_id in self._busy) if stream_id is not None \
                    else (self._pending or self._busy):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 0.5)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait(0.5)
                if not self._pending and self._closing:
                    return
                stream_id = next(iter(self._pending))
                job = self._pending.pop(stream_id)
                self._busy.add(stream_id)
            ok = self._write(job)
            try:
                job.on_done(ok)
            finally:
                with self._cond:
                    self._busy.discard(stream_id)
                    self._cond.notify_all()

    def _write(self, job: _Job) -> bool:
        if job.tracker is not None and not job.tracker.done:
            try:
                job.tracker.wait(self.tracker_wait_s)
            except Exception:  # noqa: BLE001 - zmq.NotDone on timeout: commit anyway, the result is on its way
                logger.debug("checkpoint of %s: results not confirmed sent within %.1f s", job.ckpt.stream_id,
                             self.tracker_wait_s)
        t0 = time.perf_counter()
        try:
            path = self.store.save(job.ckpt)
        except (StateError, OSError, ValueError, RuntimeError) as e:
            self.failures += 1
            logger.error("checkpoint of stream %s failed: %s", job.ckpt.stream_id, e)
            return False
        self.writes += 1
        self.last_write_s = time.perf_counter() - t0
        self.bytes_written += sum(p.stat().st_size for p in path.parent.glob("*") if p.is_file())
        logger.debug("checkpoint of stream %s written in %.3f s", job.ckpt.stream_id, self.last_write_s)
        return True

    def close(self) -> None:
        """Write what is pending, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.store.root), "writes": self.writes, "failures": self.failures,
                "last_write_s": round(self.last_write_s, 4), "bytes_written": self.bytes_written}
