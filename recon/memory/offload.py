"""Session memory of a serving node: one budget of fixed-size pages shared by every session, idle sessions offloaded.

Why: with many registered cameras most sessions are idle at any moment, yet each keeps its whole KV cache on the
device. `KVPagePool` counts every session's streaming state in pages of `page_bytes` against one node budget
(`--kv-memory`); a session that is not stepping and has been idle for `idle_s`, or the least recently used ones
when a stepping session needs room, have their state moved to host memory (pinned on CUDA, so the copy back
overlaps) and back on their next frame. The move copies bits, so a moved session continues exactly as one that
never moved (tests/recon/memory/test_offload.py).

What it is not (yet): the pages are the unit of accounting and of the budget, over each session's own per-layer
tensors; the storage is not one preallocated arena with a block table, and attention does not read pages
(FlashInfer-style paged attention would need that). An offloaded session holds no device memory either way.

Thread model: a session's thread calls `acquire` before a step and `release` after it; offloading only touches
released sessions, under the pool's lock, so a session is never moved while it steps.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from recon.errors import ConfigError, ReconError

logger = logging.getLogger(__name__)

DEFAULT_PAGE_BYTES = 2**20


class KVMemoryError(ReconError):
    """A session's state does not fit the node's KV budget even with every idle session offloaded."""


# Objects never entered: scalars, the model, generators, loggers and thread primitives (whose attributes reach
# far beyond the session, e.g. the whole logging tree).
_OPAQUE = (str, bytes, int, float, bool, type(None), torch.nn.Module, torch.Generator, torch.device, torch.dtype,
           logging.Logger, type(threading.Lock()), threading.Thread, threading.Event, threading.Condition)


def _walk_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor], skip: set[int], seen: set[int]) -> Any:
    """Replace every tensor reachable from `obj` (attributes, lists, tuples, dicts) by `fn(tensor)`, in place
    where the container allows; `skip` holds ids of objects not to enter (the shared model)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if id(obj) in skip or id(obj) in seen or isinstance(obj, _OPAQUE) or callable(obj):
        return obj
    seen.add(id(obj))
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i] = _walk_tensors(v, fn, skip, seen)
    elif isinstance(obj, tuple):
        return type(obj)(_walk_tensors(v, fn, skip, seen) for v in obj) if not hasattr(obj, "_fields") \
            else type(obj)(*(_walk_tensors(v, fn, skip, seen) for v in obj))
    elif isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _walk_tensors(obj[k], fn, skip, seen)
    elif hasattr(obj, "__dict__"):
        for k, v in list(vars(obj).items()):
            new = _walk_tensors(v, fn, skip, seen)
            if new is not v:
                setattr(obj, k, new)
    return obj


def state_tensors(backend: Any) -> list[torch.Tensor]:
    """Every tensor of a backend's streaming state (its model excluded)."""
    found: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        found.append(t)
        return t

    _walk_tensors(backend, keep, {id(getattr(backend, "model", None))}, set())
    return found


def device_bytes(backend: Any, device: torch.device) -> int:
    """Bytes of the backend's state on `device` (distinct storages counted once)."""
    storages: dict[int, int] = {}
    for t in state_tensors(backend):
        if t.device.type == device.type:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


def move_state(backend: Any, device: torch.device, copy: bool = False) -> int:
    """Move every state tensor of `backend` (not its model) to `device`; returns bytes moved. To the host from
    CUDA the copies land in pinned memory; views of one storage stay views (moved once). `copy`: also copy the
    tensors already on `device` into fresh storage (a CPU-only node's "offload", which frees nothing but runs
    the same moves)."""
    moved: dict[tuple[int, int], torch.UntypedStorage] = {}  # source storage (ptr, bytes) -> its copy
    total = 0

    def move(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.device == device and not copy:
            return t
        src = t.untyped_storage()
        key = (src.data_ptr(), src.nbytes())
        if key not in moved or not key[1]:
            pin = device.type == "cpu" and t.is_cuda
            dst = torch.empty(src.nbytes(), dtype=torch.uint8, device=device, pin_memory=pin).untyped_storage()
            dst.copy_(src, non_blocking=pin or t.is_pinned())
            moved[key] = dst
            total += src.nbytes()
        # Same storage, offset, sizes and strides: views of one storage stay views of one (moved once).
        return torch.empty(0, dtype=t.dtype, device=device).set_(moved[key], t.storage_offset(), t.size(), t.stride())

    with torch.inference_mode():  # the moved tensors stay what the session's steps created (inference tensors)
        _walk_tensors(backend, move, {id(getattr(backend, "model", None))}, set())
    if device.type == "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()  # pinned copies are asynchronous: complete before the device memory is reused
    return total


@dataclass
class _Entry:
    backend: Any
    pages: int = 0
    resident: bool = True
    active: bool = False
    last_used: float = 0.0
    offloads: int = 0


class KVPagePool:
    """One node's session-memory budget in pages (see the module docstring).

    Args:
        budget_bytes: device bytes all sessions' state may occupy (`--kv-memory`).
        device: where sessions step (offloaded state goes to the host).
        page_bytes: the page size; a session occupies `ceil(state bytes / page_bytes)` pages.
        idle_s: a released session idle this long is offloaded at the next `acquire`/`sweep` (None: only to make
            room).
        clock: monotonic seconds.
    """

    def __init__(self, budget_bytes: int, device: torch.device | str, page_bytes: int = DEFAULT_PAGE_BYTES,
                 idle_s: float | None = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if page_bytes <= 0 or budget_bytes < page_bytes:
            raise ConfigError(f"KV memory budget {budget_bytes} B must hold at least one page of {page_bytes} B")
        self.page_bytes = page_bytes
        self.num_pages = budget_bytes // page_bytes
        self.device = torch.device(device)
        self.host = torch.device("cpu")
        self._same_device = self.device.type == "cpu"  # nothing to free, but the moves run (and are tested)
        self.idle_s = idle_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def __str__(self) -> str:
        return f"KVPagePool({self.num_pages} pages of {self.page_bytes} B on {self.device})"

    def pages_of(self, nbytes: int) -> int:
        return math.ceil(nbytes / self.page_bytes)

    @property
    def resident_pages(self) -> int:
        return sum(e.pages for e in self._entries.values() if e.resident)

    def acquire(self, stream_id: str, backend: Any) -> None:
        """Before a step: the session's state resident on the device (moved back if offloaded), room made for it
        by offloading idle sessions, least recently used first.

        Raises:
            KVMemoryError: it does not fit even with every other released session offloaded (nothing is moved).
        """
        with self._lock:
            entry = self._entries.setdefault(stream_id, _Entry(backend))
            entry.backend = backend
            self._offload_idle(self._clock(), exclude=stream_id)
            need = entry.pages if not entry.resident else 0
            self._make_room(need, exclude=stream_id)
            if not entry.resident:
                move_state(backend, self.device, copy=self._same_device)
                entry.resident = True
            entry.active = True

    def release(self, stream_id: str) -> None:
        """After a step: record the session's size in pages; over budget, offload others (LRU) to get back in."""
        with self._lock:
            entry = self._entries.get(stream_id)
            if entry is None:
                return
            entry.active = False
            entry.last_used = self._clock()
            entry.pages = self.pages_of(device_bytes(entry.backend, self.device))
            try:
                self._make_room(0, exclude=stream_id)
            except KVMemoryError as e:
                logger.warning("%s: %s", self, e)

    def forget(self, stream_id: str) -> None:
        """A closed session leaves the pool."""
        with self._lock:
            self._entries.pop(stream_id, None)

    def sweep(self) -> int:
        """Offload every released session idle for `idle_s`; returns how many moved."""
        with self._lock:
            return self._offload_idle(self._clock(), exclude=None)

    def offload(self, stream_id: str) -> bool:
        """Move a released session's state to the host now (False: unknown, stepping, or already there)."""
        with self._lock:
            entry = self._entries.get(stream_id)
            if entry is None or entry.active or not entry.resident:
                return False
            self._offload(stream_id, entry)
            return True

    def _offload(self, stream_id: str, entry: _Entry) -> None:
        moved = move_state(entry.backend, self.host, copy=self._same_device)
        entry.resident = False
        entry.offloads += 1
        logger.debug("%s: offloaded %s (%d B)", self, stream_id, moved)

    def _offload_idle(self, now: float, exclude: str | None) -> int:
        if self.idle_s is None:
            return 0
        n = 0
        for sid, e in self._entries.items():
            if sid != exclude and e.resident and not e.active and now - e.last_used >= self.idle_s:
                self._offload(sid, e)
                n += 1
        return n

    def _make_room(self, need: int, exclude: str) -> None:
        free = self.num_pages - self.resident_pages
        if free >= need:
            return
        idle = sorted((e.last_used, sid) for sid, e in self._entries.items()
                      if sid != exclude and e.resident and not e.active and e.pages)
        for _, sid in idle:
            if free >= need:
                break
            e = self._entries[sid]
            self._offload(sid, e)
            free += e.pages
        if free < need:
            raise KVMemoryError(f"{self}: stream {exclude!r} needs {need} pages, {free} free with every idle "
                                f"session offloaded; raise --kv-memory or serve fewer active streams")

    def describe(self) -> dict[str, Any]:
        """For `status`: budget, pages in use, and per session its pages and where they are."""
        with self._lock:
            return {"page_bytes": self.page_bytes, "pages": self.num_pages, "resident_pages": self.resident_pages,
                    "sessions": {sid: {"pages": e.pages, "resident": e.resident, "active": e.active,
                                       "offloads": e.offloads} for sid, e in self._entries.items()}}
