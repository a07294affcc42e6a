"""Session memory of a serving node: one arena of fixed-size pages shared by every session, idle sessions offloaded.

Why: with many registered cameras most sessions are idle at any moment, yet each would keep its whole KV cache on
the device. `KVPagePool` gives a node one `recon.memory.paged.KVArena` of `--kv-memory` bytes: the KV caches of
every session that can page (the VGGT-family streaming sessions, `attach_arena`) live in its pages, so sessions of
different lengths share the device and pruning returns pages to the others. A session that is not stepping and
has been idle for `idle_s`, or the least recently used ones when a stepping session needs pages, have their pages
copied to host memory (pinned on CUDA) and freed, and are copied back on their next frame. The moves copy bits, so
a moved session continues exactly as one that never moved (tests/recon/memory/test_paged.py).

Sessions of backends whose state does not page (HorizonStream's windows, LingBot, the geometric backend) are
counted in pages of their state's bytes as a reservation against the same budget and moved whole (`move_state`).
The small per-session tensors beside the caches (policy scores, anchors) move with an offload but are not counted.

Thread model: a session's thread calls `acquire` before a step and `release` after it; offloading only touches
released sessions, under the pool's (reentrant) lock, so a session is never moved while it steps. Before a step
the pool frees and reserves the session's expected growth (what its previous step took beyond its pages, e.g. a
layer's new frame before pruning), so idle sessions are offloaded before the step rather than in the middle of it;
a step that still needs pages the arena lacks asks the pool (`reclaim`) to offload idle sessions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from recon.memory.paged import DEFAULT_PAGE_BYTES, KVArena, KVMemoryError, PagedKVCache

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PAGE_BYTES", "KVMemoryError", "KVPagePool", "device_bytes", "move_state", "state_tensors"]


# Objects never entered: scalars, the model, generators, loggers and thread primitives (whose attributes reach
# far beyond the session, e.g. the whole logging tree).
_OPAQUE = (str, bytes, int, float, bool, type(None), torch.nn.Module, torch.Generator, torch.device, torch.dtype,
           logging.Logger, type(threading.Lock()), threading.Thread, threading.Event, threading.Condition,
           KVArena, PagedKVCache)  # paged caches move page by page (PagedKVCache.offload), never as tensors


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
    caches: list[PagedKVCache] | None = None  # None: not attached yet; []: state not paged (a reservation)
    pages: int = 0  # pages held when resident, pages needed back when offloaded
    step_extra: int = 0  # pages a step took beyond those held before it (its peak), the headroom reserved next
    held_at_acquire: int = 0
    resident: bool = True
    active: bool = False
    last_used: float = 0.0
    offloads: int = 0


def attach(backend: Any, arena: KVArena, owner: str) -> list[PagedKVCache]:
    """Move a backend's KV caches into `arena` when its session can page (`attach_arena`); [] otherwise."""
    session = getattr(backend, "session", None)
    attach_arena = getattr(session, "attach_arena", None)
    if attach_arena is None or getattr(session, "static", False):
        return []
    return [c for c in attach_arena(arena, owner) if isinstance(c, PagedKVCache)]


class KVPagePool:
    """One node's session memory: a KV arena and who holds its pages (see the module docstring).

    Args:
        budget_bytes: device bytes of the arena (`--kv-memory`).
        device: where sessions step (offloaded state goes to the host).
        page_bytes: the page size (a multiple of 64 B).
        idle_s: a released session idle this long is offloaded at the next `acquire`/`sweep` (None: only to make
            room).
        clock: monotonic seconds.
    """

    def __init__(self, budget_bytes: int, device: torch.device | str, page_bytes: int = DEFAULT_PAGE_BYTES,
                 idle_s: float | None = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.arena = KVArena(budget_bytes, device, page_bytes, reclaim=self._reclaim)
        self.page_bytes = self.arena.page_bytes
        self.num_pages = self.arena.num_pages
        self.device = self.arena.device
        self.host = torch.device("cpu")
        self._same_device = self.device.type == "cpu"  # unpaged state: nothing to free, but the moves run
        self.idle_s = idle_s
        self._clock = clock
        self._lock = threading.RLock()  # reentrant: a restore's allocation may reclaim under it
        self._entries: dict[str, _Entry] = {}

    def __str__(self) -> str:
        return f"KVPagePool({self.num_pages} pages of {self.page_bytes} B on {self.device})"

    def pages_of(self, nbytes: int) -> int:
        return math.ceil(nbytes / self.page_bytes)

    @property
    def resident_pages(self) -> int:
        """Pages held: the arena's pages in use plus the reservations of unpaged sessions."""
        return self.arena.used_pages + self.arena.reserved_pages

    def acquire(self, stream_id: str, backend: Any) -> None:
        """Before a step: the session's state resident on the device (copied back if offloaded), room made for
        it by offloading idle sessions, least recently used first. A session's first acquire moves its caches
        into the arena.

        Raises:
            KVMemoryError: it does not fit even with every other released session offloaded (nothing is moved).
        """
        with self._lock:
            entry = self._entries.setdefault(stream_id, _Entry(backend))
            if entry.backend is not backend or entry.caches is None:
                for cache in entry.caches or []:  # the stream's backend was replaced: its old pages go back
                    cache.reset()
                self.arena.reserve(stream_id, 0)
                entry.backend, entry.caches = backend, None
                self._offload_idle(self._clock(), exclude=stream_id)
                self._make_room(self._attach_need(backend), exclude=stream_id)
                entry.caches = attach(backend, self.arena, stream_id)
                entry.resident = True
            self._offload_idle(self._clock(), exclude=stream_id)
            if not entry.resident:
                self._make_room(entry.pages, exclude=stream_id)
                for cache in entry.caches:
                    cache.restore()
                move_state(backend, self.device, copy=self._same_device)
                if not entry.caches:
                    self.arena.reserve(stream_id, entry.pages)
                entry.resident = True
            if entry.caches and entry.step_extra:
                self._reserve_headroom(stream_id, entry.step_extra)
            entry.held_at_acquire = self.arena.start_peak(stream_id)
            entry.active = True

    def _reserve_headroom(self, stream_id: str, pages: int) -> None:
        """Offload idle sessions until the step's expected growth is free, and reserve it for this session; if
        even that cannot free it all, reserve what is free (the step may still fit: pruning frees pages too)."""
        with contextlib.suppress(KVMemoryError):
            self._make_room(pages, exclude=stream_id)
        self.arena.reserve(stream_id, min(pages, max(self.arena.free_pages, 0)))

    def _attach_need(self, backend: Any) -> int:
        session = getattr(backend, "session", None)
        return self.pages_of(session.nbytes()) if hasattr(session, "attach_arena") and \
            hasattr(session, "nbytes") else 0

    def release(self, stream_id: str) -> None:
        """After a step: record the session's pages; over budget (an unpaged session grew), offload others (LRU)
        to get back in."""
        with self._lock:
            entry = self._entries.get(stream_id)
            if entry is None:
                return
            entry.active = False
            entry.last_used = self._clock()
            if entry.caches:
                entry.pages = sum(c.pages for c in entry.caches)
                entry.step_extra = max(self.arena.peak_of(stream_id) - entry.held_at_acquire, 0)
                self.arena.reserve(stream_id, 0)
            else:
                entry.pages = self.pages_of(device_bytes(entry.backend, self.device))
                self.arena.reserve(stream_id, entry.pages)
            if self.arena.free_pages < 0:
                try:
                    self._make_room(0, exclude=stream_id)
                except KVMemoryError as e:
                    logger.warning("%s: %s", self, e)

    def forget(self, stream_id: str) -> None:
        """A closed session leaves the pool; its pages go back to the arena."""
        with self._lock:
            entry = self._entries.pop(stream_id, None)
            if entry is not None:
                for cache in entry.caches or []:
                    cache.reset()
            self.arena.reserve(stream_id, 0)

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
        freed = sum(cache.offload() for cache in entry.caches or [])
        moved = move_state(entry.backend, self.host, copy=self._same_device)
        if entry.caches:
            entry.pages = sum(c.pages_needed() for c in entry.caches)
        else:
            freed = entry.pages
            self.arena.reserve(stream_id, 0)
        entry.resident = False
        entry.offloads += 1
        logger.debug("%s: offloaded %s (%d pages, %d B beside them)", self, stream_id, freed, moved)

    def _offload_idle(self, now: float, exclude: str | None) -> int:
        if self.idle_s is None:
            return 0
        n = 0
        for sid, e in self._entries.items():
            if sid != exclude and e.resident and not e.active and now - e.last_used >= self.idle_s:
                self._offload(sid, e)
                n += 1
        return n

    def _make_room(self, need: int, exclude: str | None) -> None:
        free = self.arena.free_pages
        if free >= need:
            return
        idle = sorted((e.last_used, sid) for sid, e in self._entries.items()
                      if sid != exclude and e.resident and not e.active and e.pages)
        for _, sid in idle:
            if free >= need:
                break
            self._offload(sid, self._entries[sid])
            free = self.arena.free_pages
        if free < need:
            raise KVMemoryError(f"{self}: stream {exclude!r} needs {need} pages, {free} free with every idle "
                                f"session offloaded; raise --kv-memory or serve fewer active streams")

    def _reclaim(self, need: int) -> None:
        """The arena ran short during a step: offload idle sessions (the arena raises if it stays short)."""
        with self._lock, contextlib.suppress(KVMemoryError):
            self._make_room(self.arena.free_pages + need, exclude=None)

    def describe(self) -> dict[str, Any]:
        """For `status`: the arena's pages, pages in use, and per session its pages and where they are."""
        with self._lock:
            return {"page_bytes": self.page_bytes, "pages": self.num_pages, "resident_pages": self.resident_pages,
                    "arena_pages_used": self.arena.used_pages,
                    "arena_allocated": self.arena.buffer is not None,
                    "sessions": {sid: {"pages": e.pages, "resident": e.resident, "active": e.active,
                                       "paged": bool(e.caches), "offloads": e.offloads}
                                 for sid, e in self._entries.items()}}
