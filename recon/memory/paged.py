"""One node's KV storage as a fixed arena of pages: sessions of different lengths share one preallocated buffer.

Why: with per-session caches (`recon.memory.kv_cache.KVCache`) every session owns storage that only grows, so a
node's memory is the sum of its sessions' peaks and an "offload" has nothing to give back to the others. Here
every cache of every session takes fixed-size pages from one `KVArena`, a single `[num_pages, page_bytes]` buffer
allocated once (its size is the `--kv-memory` budget); a cache's block table lists its pages in order, pruning
frees the pages its kept entries no longer need, and an offload copies a session's entries to the host and
returns its pages to the arena. The page counts are therefore the device memory: a node with `num_pages` pages
holds at most that many, whatever the number of registered sessions.

Layout: a page is `page_bytes` raw bytes, viewed per cache as `[B, H, tokens_per_page, D]` of the cache's dtype
(one page kind each for keys, values and, when tracked, token ids), so layers of different widths draw from the
same pages. Entry j of a cache sits in page `table[j // tokens_per_page]`, row `j % tokens_per_page`; every head
keeps its own entries at the same positions, as `KVCache.compact` keeps them.

Attention reads contiguous K/V: `keys()`/`values()` gather the pages into `[B, H, n, D]` (one `torch.cat`; a
gather plus SDPA on the CPU, the same arithmetic as the unpaged cache, so results are bitwise equal: the values
attended are the same bits in the same order, tests/recon/memory/test_paged.py). Within one `update` the
gathered tensors are reused by the eviction policy and the attention, then dropped, so at most one layer's
contiguous copy exists at a time.

Thread model: the arena's lock guards only the free list; when pages run short `alloc` calls `reclaim` (the
node's `KVPagePool` offloading idle sessions) without holding it, so the two locks are never taken in opposite
orders.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import torch

from recon.errors import ConfigError, ReconError
from recon.memory.kv_cache import EvictionPolicy, KVCache

logger = logging.getLogger(__name__)

DEFAULT_PAGE_BYTES = 2**16  # 16 fp32 entries of a full-size VGGT layer (16 heads of 64)
_ALIGN = 64  # page offsets stay aligned for every dtype view (and for vector loads)


class KVMemoryError(ReconError):
    """A session's state does not fit the node's KV budget even with every idle session offloaded."""


class KVArena:
    """A fixed pool of `num_pages` pages of `page_bytes` on `device`, handed out to paged caches.

    Args:
        budget_bytes: bytes of the arena (`--kv-memory`); `budget_bytes // page_bytes` pages.
        device: where the pages live.
        page_bytes: page size, a multiple of 64 bytes.
        reclaim: called with the number of pages missing when an allocation falls short (and without the
            arena's lock); it may free pages (offload idle sessions) before the allocation is retried once.

    The buffer is allocated whole at the first page handed out (a node whose backend keeps no KV cache never
    allocates it) and never grows. Reserved pages (`reserve`) are counted against the budget for one owner: the
    state of sessions that do not page (other backends), or a paged session's headroom for its next step, see
    `KVPagePool`.
    """

    def __init__(self, budget_bytes: int, device: torch.device | str, page_bytes: int = DEFAULT_PAGE_BYTES,
                 reclaim: Callable[[int], None] | None = None) -> None:
        if page_bytes <= 0 or page_bytes % _ALIGN:
            raise ConfigError(f"KV page size must be a positive multiple of {_ALIGN} B, got {page_bytes}")
        if budget_bytes < page_bytes:
            raise ConfigError(f"KV memory budget {budget_bytes} B must hold at least one page of {page_bytes} B")
        self.page_bytes = int(page_bytes)
        self.num_pages = int(budget_bytes // page_bytes)
        self.device = torch.device(device)
        self.reclaim = reclaim
        self.buffer: torch.Tensor | None = None
        self._views: dict[tuple[torch.dtype, tuple[int, ...]], torch.Tensor] = {}
        self._lock = threading.Lock()
        self._free = list(range(self.num_pages - 1, -1, -1))  # a stack: low page numbers first
        self._owner: dict[int, str] = {}
        self._held: dict[str, int] = {}  # pages of the buffer per owner
        self._peak: dict[str, int] = {}  # most pages held per owner since `start_peak`
        self._reserved: dict[str, int] = {}

    def __str__(self) -> str:
        return f"KVArena({self.num_pages} pages of {self.page_bytes} B on {self.device})"

    @property
    def used_pages(self) -> int:
        """Pages of the buffer held by caches."""
        return self.num_pages - len(self._free)

    @property
    def reserved_pages(self) -> int:
        return sum(self._reserved.values())

    @property
    def free_pages(self) -> int:
        """Pages an allocation may still take (reservations count against the budget)."""
        return len(self._free) - self.reserved_pages

    def pages_of(self, owner: str) -> int:
        """Pages held by `owner` (its caches' pages plus its reservation)."""
        with self._lock:
            return self._held.get(owner, 0) + self._reserved.get(owner, 0)

    def start_peak(self, owner: str) -> int:
        """Start counting `owner`'s peak from the pages it holds now (returned)."""
        with self._lock:
            self._peak[owner] = held = self._held.get(owner, 0)
            return held

    def peak_of(self, owner: str) -> int:
        """Most pages `owner` held since `start_peak`."""
        with self._lock:
            return self._peak.get(owner, self._held.get(owner, 0))

    def reserve(self, owner: str, pages: int) -> None:
        """Set `owner`'s reservation: pages counted against the budget for it alone. Either the state of an
        unpaged session, or the headroom of a paged one for its next step (its own allocations draw on it first,
        so a step that stays within its headroom never waits for or fails on another session's pages); 0 drops
        it."""
        with self._lock:
            if pages > 0:
                self._reserved[owner] = int(pages)
            else:
                self._reserved.pop(owner, None)

    def _take(self, n: int, owner: str) -> list[int] | None:
        with self._lock:
            own = self._reserved.get(owner, 0)
            if n > len(self._free) - sum(self._reserved.values()) + own:
                return None
            if own:
                self._reserved[owner] = own - min(own, n)
            if self.buffer is None:
                with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
                    self.buffer = torch.empty(self.num_pages, self.page_bytes, dtype=torch.uint8, device=self.device)
                logger.info("%s: allocated %.1f MB", self, self.buffer.numel() / 2**20)
            pages = [self._free.pop() for _ in range(n)]
            for p in pages:
                self._owner[p] = owner
            held = self._held[owner] = self._held.get(owner, 0) + n
            if owner in self._peak:
                self._peak[owner] = max(self._peak[owner], held)
            return pages

    def alloc(self, n: int, owner: str) -> list[int]:
        """`n` free pages for `owner`.

        Raises:
            KVMemoryError: fewer than `n` pages free, even after `reclaim` (nothing is taken then).
        """
        if n <= 0:
            return []
        pages = self._take(n, owner)
        if pages is None and self.reclaim is not None:
            self.reclaim(n - self.free_pages)
            pages = self._take(n, owner)
        if pages is None:
            raise KVMemoryError(f"{self}: {owner!r} needs {n} pages, {max(self.free_pages, 0)} free with every "
                                "idle session offloaded; raise --kv-memory or serve fewer active streams")
        return pages

    def free(self, pages: list[int]) -> None:
        """Give `pages` back (they must be held)."""
        with self._lock:
            for p in pages:
                owner = self._owner.pop(p, None)
                if owner is None:
                    raise ValueError(f"{self}: page {p} freed twice or never allocated")
                self._free.append(p)
                self._held[owner] -= 1
                if not self._held[owner]:
                    del self._held[owner]
                    self._peak.pop(owner, None)

    def pages_view(self, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """Every page as `[num_pages, *shape]` of `dtype` (each page's leading bytes; a view, cached per layout)."""
        key = (dtype, shape)
        view = self._views.get(key)
        if view is None:
            assert self.buffer is not None
            with torch.inference_mode(False):
                view = self.buffer.view(dtype)[:, :math.prod(shape)].unflatten(1, shape)
            self._views[key] = view
        return view


class _PagedRows:
    """One kind of entries (keys, values or token ids) of one cache: `[B, H, n, *tail]` kept in arena pages."""

    def __init__(self, arena: KVArena, like: torch.Tensor) -> None:
        self.arena = arena
        self.dtype = like.dtype
        self.lead = tuple(like.shape[:2])  # (B, H)
        self.tail = tuple(like.shape[3:])  # (D,) or () for token ids
        row_bytes = math.prod(self.lead) * math.prod(self.tail) * like.element_size()
        self.per_page = arena.page_bytes // row_bytes
        if self.per_page < 1:
            raise ConfigError(f"{arena}: a page of {arena.page_bytes} B holds no entry of {row_bytes} B "
                              f"({tuple(like.shape)} {like.dtype}); use larger pages")
        self.table: list[int] = []

    def pages_for(self, n: int) -> int:
        return math.ceil(n / self.per_page)

    def _pages(self) -> torch.Tensor:
        return self.arena.pages_view(self.dtype, (*self.lead, self.per_page, *self.tail))

    def write(self, start: int, rows: torch.Tensor) -> None:
        """Write `rows [B, H, T, *tail]` at positions `start ..` (the pages must be in the table)."""
        pages, pos, end = self._pages(), start, start + rows.shape[2]
        while pos < end:
            i, r = divmod(pos, self.per_page)
            m = min(self.per_page - r, end - pos)
            pages[self.table[i], :, :, r:r + m].copy_(rows[:, :, pos - start:pos - start + m])
            pos += m

    def gather(self, n: int) -> torch.Tensor:
        """`[B, H, n, *tail]` of the first `n` entries (a fresh copy: one page select, one reshape)."""
        used = self.pages_for(n)
        if used == 0:
            return torch.empty((*self.lead, 0, *self.tail), dtype=self.dtype, device=self.arena.device)
        pages = self._pages()
        if used == 1:
            return pages[self.table[0], :, :, :n].clone()
        idx = torch.tensor(self.table[:used], dtype=torch.long, device=pages.device)
        picked = pages.index_select(0, idx).movedim(0, 2)  # [B, H, used, per_page, *tail]
        return picked.reshape(*self.lead, used * self.per_page, *self.tail)[:, :, :n]


class PagedKVCache(KVCache):
    """A `KVCache` whose entries live in pages of a node's `KVArena` (see the module docstring).

    Args:
        arena: the node's arena.
        owner: whose pages these are (the stream id), for the arena's per-session counts.
        layer, policy, track_token_ids: as `KVCache`.

    `offload()` copies the entries to the host (pinned when the arena is on CUDA) and frees the pages;
    `restore()` takes pages again and copies them back. Appending to an offloaded cache is an error: the node
    restores a session before it steps.
    """

    paged = True

    def __init__(self, arena: KVArena, owner: str, layer: int = 0, policy: EvictionPolicy | None = None,
                 track_token_ids: bool = False) -> None:
        self.arena = arena
        self.owner = owner
        self._rows: dict[str, _PagedRows] = {}
        self._host: dict[str, torch.Tensor] | None = None
        self._dense: dict[str, torch.Tensor] | None = None  # gathered K/V(/ids) during one update
        super().__init__(layer, policy, 0, track_token_ids)

    @property
    def pages(self) -> int:
        """Arena pages this cache holds."""
        return sum(len(r.table) for r in self._rows.values())

    @property
    def resident(self) -> bool:
        return self._host is None

    @property
    def capacity(self) -> int:
        return min((len(r.table) * r.per_page for r in self._rows.values()), default=0)

    def reset(self) -> None:
        """Drop the contents and give every page back."""
        for rows in getattr(self, "_rows", {}).values():
            self.arena.free(rows.table)
        self._rows, self._host, self._dense = {}, None, None
        self._n = 0
        self._appended = 0

    def _kinds(self, k: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        kinds = {"k": k, "v": v}
        if self.track_token_ids:
            kinds["ids"] = torch.arange(self._appended, self._appended + k.shape[2],
                                        device=k.device).expand(k.shape[0], k.shape[1], k.shape[2])
        return kinds

    def _grow(self, n: int) -> None:
        """Pages for `n` entries in every kind, taken from the arena at once (all or nothing)."""
        short = {name: rows.pages_for(n) - len(rows.table) for name, rows in self._rows.items()}
        pages = self.arena.alloc(sum(max(s, 0) for s in short.values()), self.owner)
        for name, s in short.items():
            if s > 0:
                self._rows[name].table.extend(pages[:s])
                pages = pages[s:]

    def _shrink(self, n: int) -> None:
        """Free the pages past those `n` entries need."""
        for rows in self._rows.values():
            keep = rows.pages_for(n)
            if len(rows.table) > keep:
                self.arena.free(rows.table[keep:])
                del rows.table[keep:]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append `k [B,H,T,Dk]`, `v [B,H,T,Dv]`, taking pages as needed (KVMemoryError when none are left)."""
        if self._host is not None:
            raise RuntimeError(f"PagedKVCache layer {self.layer}: append to an offloaded cache (restore() first)")
        kinds = self._kinds(k, v)
        if not self._rows:
            self._rows = {name: _PagedRows(self.arena, t) for name, t in kinds.items()}
        ref = self._rows["k"]
        if ref.lead != tuple(k.shape[:2]) or ref.dtype != k.dtype or self._rows["v"].dtype != v.dtype:
            raise ValueError(f"PagedKVCache layer {self.layer}: appended K/V {tuple(k.shape)} {k.dtype}/{v.dtype} "
                             f"do not match the cache ({ref.lead}, {ref.dtype}/{self._rows['v'].dtype}); batch "
                             "size, heads and dtypes must stay fixed within a session (reset() first)")
        need = self._n + k.shape[2]
        self._grow(need)
        for name, t in kinds.items():
            self._rows[name].write(self._n, t)
        self._n = need
        self._appended += k.shape[2]

    def _get(self, name: str) -> torch.Tensor:
        if self._dense is not None:
            return self._dense[name]
        if self._host is not None:
            return self._host[name]
        return self._rows[name].gather(self._n)

    def keys(self) -> torch.Tensor:
        """Contiguous `[B, H, n, Dk]` of the cached keys (gathered from the pages)."""
        return self._get("k")

    def values(self) -> torch.Tensor:
        return self._get("v")

    def token_ids(self) -> torch.Tensor | None:
        return self._get("ids") if "ids" in self._rows else None

    def compact(self, keep_idx: torch.Tensor, *, ascending: bool = False, skip: int = 0) -> None:
        """Keep the entries at `keep_idx [B, H, m]` in that order (as `KVCache.compact`); the pages past the
        first `m` entries go back to the arena. The first `skip` entries (anchors) are not rewritten."""
        if keep_idx.dim() != 3 or keep_idx.shape[:2] != tuple(self._rows["k"].lead):
            raise ValueError(f"compact: keep_idx must be [B, H, m], got {tuple(keep_idx.shape)}")
        m = keep_idx.shape[2]
        kept: dict[str, torch.Tensor] = {}
        for name, rows in self._rows.items():
            dense = self._get(name)
            idx = keep_idx if not rows.tail else keep_idx.unsqueeze(-1).expand(-1, -1, -1, *rows.tail)
            kept[name] = torch.gather(dense, 2, idx)
            rows.write(skip, kept[name][:, :, skip:])
        self._shrink(m)
        if self._dense is not None:
            self._dense = kept
        self._n = m

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As `KVCache.update`: the pages are gathered once for the policy and the attention."""
        if self._host is not None:
            raise RuntimeError(f"PagedKVCache layer {self.layer}: update of an offloaded cache (restore() first)")
        self.append(k, v)
        try:
            self._dense = {name: rows.gather(self._n) for name, rows in self._rows.items()}
            if self.policy is not None:
                self.policy.after_append(self.layer, self, self.frame_index)
            return self._dense["k"], self._dense["v"]
        finally:
            self._dense = None

    def nbytes(self) -> int:
        """Bytes of the arena pages held."""
        return self.pages * self.arena.page_bytes

    def offload(self) -> int:
        """Copy the entries to the host and free the pages; returns the pages freed (0: already offloaded)."""
        if self._host is not None:
            return 0
        pin = self.arena.device.type == "cuda"
        host: dict[str, torch.Tensor] = {}
        for name, rows in self._rows.items():
            dense = rows.gather(self._n)
            dst = torch.empty(dense.shape, dtype=dense.dtype, pin_memory=pin)
            dst.copy_(dense, non_blocking=pin)
            host[name] = dst
        if pin:
            torch.cuda.synchronize(self.arena.device)  # the copies complete before the pages are reused
        freed = self.pages
        self._shrink(0)
        self._host = host
        return freed

    def restore(self) -> int:
        """Pages back from the arena and the entries into them; returns the pages taken (0: already resident).

        Raises:
            KVMemoryError: the arena has no room (the entries stay on the host).
        """
        if self._host is None:
            return 0
        self._grow(self._n)
        for name, t in self._host.items():
            self._rows[name].write(0, t.to(self.arena.device, non_blocking=True))
        self._host = None
        return self.pages

    def pages_needed(self) -> int:
        """Pages the entries occupy when resident."""
        return sum(rows.pages_for(self._n) for rows in self._rows.values())

    def export_state(self) -> dict[str, Any]:
        """As `KVCache.export_state` (copies of the entries; the pages are a storage detail)."""
        held = bool(self._rows)
        return {"k": self.keys().clone() if held else None, "v": self.values().clone() if held else None,
                "ids": self.token_ids().clone() if held and "ids" in self._rows else None,  # type: ignore[union-attr]
                "capacity": self._n, "appended": self._appended, "frame_index": self.frame_index,
                "first_frame": self.first_frame}

    def import_state(self, state: dict[str, Any]) -> None:
        """Replace the contents with an `export_state` of any cache of the same layer (pages taken as needed)."""
        k, v = self._import_counters(state)
        if k is None or v is None:
            return
        appended = self._appended
        ids = state.get("ids")
        self._rows = {"k": _PagedRows(self.arena, k), "v": _PagedRows(self.arena, v)}
        rows = {"k": k, "v": v}
        if self.track_token_ids:
            if ids is None:
                ids = torch.full(k.shape[:3], -1, dtype=torch.long, device=k.device)
            self._rows["ids"] = _PagedRows(self.arena, ids)
            rows["ids"] = ids
        n = int(k.shape[2])
        self._grow(n)
        for name, t in rows.items():
            self._rows[name].write(0, t.to(self.arena.device))
        self._n, self._appended = n, appended
