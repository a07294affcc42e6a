"""Streaming KV memory of the global attention layers: preallocated per-layer caches plus an eviction hook.

Design (issue 4, item 3; shaped for the pruning and window policies of issue 5):
- A `KVCache` holds one attention layer's keys and values as `[B, heads, capacity, head_dim]` buffers and a
  length `n`. Appending writes into the free tail; when full, the storage doubles (amortised O(1) per token,
  never a per-frame `torch.cat` of the whole cache). `keys()`/`values()` are views of the first `n` slots.
- Keys are stored post-qk-norm and post-RoPE (what attention consumes), so nothing is re-normalised per step.
- `compact(keep_idx)` keeps, per (batch, head), the given cache positions in the given order and moves them to
  the front of the same storage: heads may keep *different* tokens but always the same count, so K/V stay
  dense and fused attention kernels still apply (InfiniteVGGT, reference notes §4.1).
- Optional token ids (`[B, heads, capacity]` int64) follow every append/compact, so a policy or a test can tell
  which frame/token each surviving entry came from.
- An `EvictionPolicy` is called by `KVCache.update` once per layer per step, *after* the current frame has been
  appended and *before* the frame attends (InfiniteVGGT's order: the new frame's own tokens are candidates).
  `StreamingMemory` owns the per-layer caches and the policy, and brackets each frame with
  `begin_frame`/`end_frame` so a policy can compute per-frame budgets and aggregate scores.
- `StaticKVCache` is the same contract with static shapes, for CUDA graphs and `torch.compile`: storage of one
  fixed capacity allocated at the first append, the length a device tensor, appends written at device-computed
  positions, attention over the whole storage with a key mask (`key_mask()`), and eviction as a device-side keep
  mask (`compact_mask_`). Nothing in it reads a value back to the host, so a frame's step has the same shapes and
  no host synchronisation from the second frame on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from recon.errors import ConfigError

logger = logging.getLogger(__name__)


class EvictionPolicy:
    """Base eviction policy: keeps everything (the unbounded StreamVGGT cache).

    Subclasses override the hooks; all per-session state must be cleared in `reset()`.
    """

    name = "unbounded"

    def reset(self) -> None:
        """Forget all state (called by `StreamingMemory.reset`)."""

    def begin_frame(self, frame_index: int, num_layers: int) -> None:
        """Called once before a frame runs through the layers (e.g. to compute per-layer budgets)."""

    def after_append(self, layer: int, cache: KVCache, frame_index: int) -> None:
        """Called once per layer per frame, after the frame's K/V were appended, before attention.

        A pruning policy calls `cache.compact(keep_idx)` here.
        """

    def end_frame(self, frame_index: int) -> None:
        """Called once after the frame went through every layer (e.g. to update per-layer scores)."""

    def export_state(self) -> dict[str, Any]:
        """Per-session state for a checkpoint (plain values and tensors); the base policy keeps none."""
        return {}

    def import_state(self, state: dict[str, Any]) -> None:
        """Restore an `export_state` of the same policy class."""

    def use_static_shapes(self, capacity: int, appends_per_frame: int = 1) -> None:
        """Switch to `StaticKVCache`s (`capacity`: entries a layer may hold after eviction, 0: the policy's own
        bound; `appends_per_frame`: cache appends per frame, e.g. one per camera-head iteration). The base policy
        keeps everything, which no fixed storage can hold."""
        raise ConfigError(f"memory policy {self.name!r} is unbounded; static shapes need a bounded policy "
                          "(infinitevggt, window, sinks)")

    def static_capacity(self, layer: int, first_append: int) -> int | None:
        """Entries `layer` holds at most after eviction, once the first append (`first_append` entries) is known."""
        return None


class KVCache:
    """One layer's key/value cache in preallocated, doubling storage.

    Args:
        layer: index of the attention layer this cache serves (passed to the policy).
        policy: eviction policy called on every `update`, or None (keep everything).
        capacity: initial capacity in tokens (0: sized by the first append).
        track_token_ids: keep an int64 id per entry and head (ids count appended tokens from 0).
    """

    static = False  # StaticKVCache: fixed storage, device-side length

    def __init__(self, layer: int = 0, policy: EvictionPolicy | None = None, capacity: int = 0,
                 track_token_ids: bool = False) -> None:
        self.layer = layer
        self.policy = policy
        self.initial_capacity = capacity
        self.track_token_ids = track_token_ids
        self.frame_index = 0
        self.first_frame = True  # set with frame_index by StreamingMemory.begin_frame
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._ids: torch.Tensor | None = None
        self._n = 0
        self._appended = 0

    def __len__(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return 0 if self._k is None else int(self._k.shape[2])

    @property
    def appended_total(self) -> int:
        """Tokens appended since the last reset, evicted ones included (the next token id)."""
        return self._appended

    def reset(self) -> None:
        """Drop the contents and the storage."""
        self._k = self._v = self._ids = None
        self._n = 0
        self._appended = 0

    def _allocate(self, like_k: torch.Tensor, like_v: torch.Tensor, capacity: int) -> None:
        B, H, _, Dk = like_k.shape
        Dv = like_v.shape[-1]
        new_k = like_k.new_empty(B, H, capacity, Dk)
        new_v = like_v.new_empty(B, H, capacity, Dv)
        new_ids = None
        if self.track_token_ids:
            new_ids = torch.empty(B, H, capacity, dtype=torch.long, device=like_k.device)
        if self._k is not None and self._n:
            new_k[:, :, :self._n].copy_(self._k[:, :, :self._n])
            new_v[:, :, :self._n].copy_(self._v[:, :, :self._n])
            if new_ids is not None and self._ids is not None:
                new_ids[:, :, :self._n].copy_(self._ids[:, :, :self._n])
        self._k, self._v, self._ids = new_k, new_v, new_ids

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append `k [B,H,T,Dk]`, `v [B,H,T,Dv]` at the end; grows the storage by doubling when full."""
        T = k.shape[2]
        need = self._n + T
        if self._k is None:
            self._allocate(k, v, max(self.initial_capacity, need))
        elif need > self.capacity:
            self._allocate(k, v, max(need, 2 * self.capacity))
        assert self._k is not None and self._v is not None
        if self._k.shape[:2] != k.shape[:2] or self._k.dtype != k.dtype or self._v.dtype != v.dtype:
            raise ValueError(f"KVCache layer {self.layer}: appended K/V {tuple(k.shape)} {k.dtype}/{v.dtype} do not "
                             f"match the cache ({tuple(self._k.shape[:2])}, {self._k.dtype}/{self._v.dtype}); "
                             "batch size, heads and dtypes must stay fixed within a session (reset() first)")
        self._k[:, :, self._n:need].copy_(k)
        self._v[:, :, self._n:need].copy_(v)
        if self._ids is not None:
            ids = torch.arange(self._appended, self._appended + T, device=k.device)
            self._ids[:, :, self._n:need].copy_(ids.expand(k.shape[0], k.shape[1], T))
        self._n = need
        self._appended += T

    def keys(self) -> torch.Tensor:
        """View `[B, H, n, Dk]` of the cached keys (post-norm, post-RoPE)."""
        assert self._k is not None
        return self._k[:, :, :self._n]

    def values(self) -> torch.Tensor:
        """View `[B, H, n, Dv]` of the cached values."""
        assert self._v is not None
        return self._v[:, :, :self._n]

    def token_ids(self) -> torch.Tensor | None:
        """View `[B, H, n]` of the entries' token ids, or None when not tracked."""
        return None if self._ids is None else self._ids[:, :, :self._n]

    def compact(self, keep_idx: torch.Tensor, *, ascending: bool = False, skip: int = 0) -> None:
        """Keep the entries at positions `keep_idx [B, H, m]` (per batch and head), in that order, in place.

        The kept entries are gathered and written to slots `0..m-1` of the same storage; the capacity is kept.
        With `ascending=True` (indices strictly ascending per head, as the eviction policies of
        recon.memory.policies produce) the rows move through recon.kernels.kv_prune.compact_kv_ (Triton kernel on
        CUDA) without a full-size temporary; the first `skip` entries (anchors) are known to stay where they are.
        """
        if keep_idx.dim() != 3 or keep_idx.shape[:2] != self.keys().shape[:2]:
            raise ValueError(f"compact: keep_idx must be [B, H, m], got {tuple(keep_idx.shape)}")
        m = keep_idx.shape[2]
        assert self._k is not None and self._v is not None
        if ascending:
            from recon.kernels.kv_prune import compact_kv_

            compact_kv_(self._k, self._v, keep_idx, self._n, skip=skip)
        else:
            k, v = self.keys(), self.values()
            kept_k = torch.gather(k, 2, keep_idx.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1]))
            kept_v = torch.gather(v, 2, keep_idx.unsqueeze(-1).expand(-1, -1, -1, v.shape[-1]))
            self._k[:, :, :m].copy_(kept_k)
            self._v[:, :, :m].copy_(kept_v)
        if self._ids is not None:
            kept_ids = torch.gather(self._ids[:, :, :self._n], 2, keep_idx)
            self._ids[:, :, :m].copy_(kept_ids)
        self._n = m

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the step's K/V, run the eviction policy, and return the K/V views to attend to."""
        self.append(k, v)
        if self.policy is not None:
            self.policy.after_append(self.layer, self, self.frame_index)
        return self.keys(), self.values()

    def key_mask(self) -> torch.Tensor | None:
        """Which of the returned keys are valid (None: all of them)."""
        return None

    def nbytes(self) -> int:
        """Bytes of allocated storage (capacity, not length)."""
        total = 0
        for t in (self._k, self._v, self._ids):
            if t is not None:
                total += t.numel() * t.element_size()
        return total

    def export_state(self) -> dict[str, Any]:
        """Contents for a checkpoint: copies of the first `len` entries (K, V, token ids), the capacity and the
        counters. Kept apart from the storage layout, so the storage may change without changing checkpoints."""
        n = len(self)
        held = self._k is not None and self._v is not None
        return {"k": self._k[:, :, :n].clone() if held else None, "v": self._v[:, :, :n].clone() if held else None,
                "ids": self._ids[:, :, :n].clone() if self._ids is not None else None, "capacity": self.capacity,
                "appended": self._appended, "frame_index": self.frame_index, "first_frame": self.first_frame}

    def _import_counters(self, state: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self.reset()
        self.frame_index = int(state["frame_index"])
        self.first_frame = bool(state.get("first_frame", self.frame_index == 0))
        self._appended = int(state["appended"])
        return state["k"], state["v"]

    def _import_rows(self, state: dict[str, Any], k: torch.Tensor, v: torch.Tensor) -> int:
        assert self._k is not None and self._v is not None
        n = int(k.shape[2])
        self._k[:, :, :n].copy_(k)
        self._v[:, :, :n].copy_(v)
        ids = state.get("ids")
        if self._ids is not None and ids is not None:
            self._ids[:, :, :n].copy_(ids)
        return n

    def import_state(self, state: dict[str, Any]) -> None:
        """Replace the contents with an `export_state` of a cache of the same layer (capacity preserved)."""
        k, v = self._import_counters(state)
        if k is None or v is None:
            return
        self._allocate(k, v, max(int(state["capacity"]), int(k.shape[2])))
        self._n = self._import_rows(state, k, v)


class StaticKVCache(KVCache):
    """A `KVCache` whose shapes never change: CUDA-graph and `torch.compile` friendly (see the module docstring).

    The storage holds `capacity(first_append)` entries, sized by the eviction policy (`static_capacity`) when the
    first K/V arrive, since only then is a frame's token count known. Appending past it is an error: a static
    policy evicts down to its bound before the next frame's append. `len()` reads the device length back (a
    synchronisation): for stats and tests, never inside a step.
    """

    static = True

    def __init__(self, layer: int = 0, policy: EvictionPolicy | None = None, capacity: int = 0,
                 track_token_ids: bool = False) -> None:
        super().__init__(layer, policy, capacity, track_token_ids)
        self.length: torch.Tensor | None = None  # int64 scalar on the storage's device
        self._positions: torch.Tensor | None = None  # arange(capacity), cached
        self._next_id: torch.Tensor | None = None  # device counter of appended tokens (token ids)
        self._per_frame = 0  # entries appended per frame, counted in the first frame

    def __len__(self) -> int:
        return 0 if self.length is None else int(self.length)

    def reset(self) -> None:
        super().reset()
        self.length = None
        self._positions = None
        self._next_id = None
        self._per_frame = 0

    def end_frame(self) -> None:
        """Host bookkeeping after a frame (called by StreamingMemory, outside any compiled step): the host counter
        of appended entries advances by the first frame's count, so the step itself never touches a Python number
        that changes per frame (a compiled step would specialise on it and recompile every frame)."""
        if self.first_frame:
            self._per_frame = self._appended
        else:
            self._appended += self._per_frame

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As `KVCache.update`; the policy gets frame index 0 for the first frame and 1 for every later one (all
        a static policy distinguishes), for the same reason as `end_frame`."""
        self.append(k, v)
        if self.policy is not None:
            self.policy.after_append(self.layer, self, 0 if self.first_frame else 1)
        return self.keys(), self.values()

    def _allocate(self, like_k: torch.Tensor, like_v: torch.Tensor, capacity: int) -> None:
        """Zero-filled storage: attention reads every row, and a masked key still enters the kernel's arithmetic
        (NaN garbage in an unused row would turn the masked softmax into NaN)."""
        B, H, _, Dk = like_k.shape
        self._k = like_k.new_zeros(B, H, capacity, Dk)
        self._v = like_v.new_zeros(B, H, capacity, like_v.shape[-1])
        self._ids = torch.full((B, H, capacity), -1, dtype=torch.long, device=like_k.device) \
            if self.track_token_ids else None

    def _capacity_for(self, T: int) -> int:
        bound = self.policy.static_capacity(self.layer, T) if self.policy is not None else None
        if bound is None:
            raise ValueError(f"StaticKVCache layer {self.layer}: the policy {getattr(self.policy, 'name', None)!r} "
                             "bounds no cache (static shapes need a bounded memory)")
        return max(int(bound) + T, self.initial_capacity)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write `k [B,H,T,Dk]`, `v [B,H,T,Dv]` at rows `length .. length+T-1` (positions computed on the device)."""
        T = k.shape[2]
        if self._k is None:
            self._allocate(k, v, self._capacity_for(T))
            self.length = torch.zeros((), dtype=torch.long, device=k.device)
            self._next_id = torch.zeros((), dtype=torch.long, device=k.device)
            self._positions = torch.arange(self.capacity, device=k.device)
        assert self._k is not None and self._v is not None and self.length is not None
        if self._k.shape[:2] != k.shape[:2] or self._k.dtype != k.dtype or self._v.dtype != v.dtype:
            raise ValueError(f"StaticKVCache layer {self.layer}: appended K/V {tuple(k.shape)} {k.dtype}/{v.dtype} "
                             f"do not match the cache ({tuple(self._k.shape[:2])}, {self._k.dtype}/{self._v.dtype})")
        rows = self.length + self._positions[:T]
        self._k.index_copy_(2, rows, k)
        self._v.index_copy_(2, rows, v)
        if self._ids is not None and self._next_id is not None:
            ids = (self._next_id + self._positions[:T]).expand(k.shape[0], k.shape[1], T)
            self._ids.index_copy_(2, rows, ids)
            self._next_id.add_(T)
        self.length.add_(T)  # in place: the tensor's address stays fixed (CUDA graphs)
        if self.first_frame:
            self._appended += T  # later frames: end_frame

    def keys(self) -> torch.Tensor:
        """The whole storage `[B, H, capacity, Dk]`; rows at and after `length` are not valid (`key_mask`)."""
        assert self._k is not None
        return self._k

    def values(self) -> torch.Tensor:
        assert self._v is not None
        return self._v

    def token_ids(self) -> torch.Tensor | None:
        return self._ids

    @property
    def positions(self) -> torch.Tensor:
        """`[capacity]` row indices 0..capacity-1 on the storage's device."""
        assert self._positions is not None
        return self._positions

    def valid(self) -> torch.Tensor:
        """`[capacity]` bool: the rows holding entries."""
        assert self._positions is not None and self.length is not None
        return self._positions < self.length

    def key_mask(self) -> torch.Tensor:
        """`[1, 1, 1, capacity]` attention mask (True = attend) for the whole storage."""
        return self.valid()[None, None, None, :]

    def compact(self, keep_idx: torch.Tensor, *, ascending: bool = False, skip: int = 0) -> None:
        raise NotImplementedError("StaticKVCache evicts with compact_mask_ (a keep mask), not kept indices")

    def export_state(self) -> dict[str, Any]:
        """As `KVCache.export_state` (the valid rows are the first `len`), plus the per-frame append count."""
        return {**super().export_state(), "per_frame": self._per_frame}

    def import_state(self, state: dict[str, Any]) -> None:
        """Restore into fixed storage of the saved capacity; length and token-id counters back on the device."""
        k, v = self._import_counters(state)
        self._per_frame = int(state.get("per_frame", 0))
        if k is None or v is None:
            return
        self._allocate(k, v, int(state["capacity"]))
        n = self._import_rows(state, k, v)
        self.length = torch.tensor(n, dtype=torch.long, device=k.device)
        self._next_id = torch.tensor(self._appended, dtype=torch.long, device=k.device)
        self._positions = torch.arange(self.capacity, device=k.device)

    def compact_mask_(self, keep: torch.Tensor) -> None:
        """Keep the rows where `keep [B, H, capacity]` is True (the same count in every head), in their order, moved
        to the front of the same storage; static shapes (a stable sort of the mask, a gather, a copy)."""
        assert self._k is not None and self._v is not None and self._positions is not None
        order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices  # kept rows first, ascending
        for buf in (self._k, self._v):
            moved = torch.gather(buf, 2, order.unsqueeze(-1).expand(-1, -1, -1, buf.shape[-1]))
            buf.copy_(moved)
        if self._ids is not None:
            self._ids.copy_(torch.gather(self._ids, 2, order))
        self.length.copy_(keep[0, 0].sum(dtype=torch.long))


class StreamingMemory:
    """The per-layer caches of one streaming session plus their eviction policy.

    Args:
        num_layers: number of attention layers with a cache (the aggregator's global blocks).
        policy: eviction policy shared by all layers (None: unbounded).
        capacity: initial capacity per layer in tokens (0: grow from the first frame).
        track_token_ids: keep token ids in every cache (for pruning logs and tests).
    """

    def __init__(self, num_layers: int, policy: EvictionPolicy | None = None, capacity: int = 0,
                 track_token_ids: bool = False, static: bool = False, appends_per_frame: int = 1) -> None:
        self.policy = policy if policy is not None else EvictionPolicy()
        self.static = static
        self.first_frame = True  # frame_index == 0, as a flag a compiled step may read without specialising
        if static:
            self.policy.use_static_shapes(capacity, appends_per_frame)
        cls = StaticKVCache if static else KVCache
        self.caches = [cls(i, self.policy, 0 if static else capacity, track_token_ids) for i in range(num_layers)]
        self.frame_index = 0

    def __iter__(self) -> Iterator[KVCache]:
        return iter(self.caches)

    def __getitem__(self, layer: int) -> KVCache:
        return self.caches[layer]

    def __len__(self) -> int:
        return len(self.caches)

    def begin_frame(self) -> None:
        """Announce a new frame to the policy and the caches."""
        for cache in self.caches:
            cache.frame_index = self.frame_index
            cache.first_frame = self.first_frame
        self.policy.begin_frame(self.frame_index, len(self.caches))

    def end_frame(self) -> None:
        """Close the frame: policy bookkeeping, then advance the frame counter."""
        self.policy.end_frame(self.frame_index)
        if self.static:
            for cache in self.caches:
                cache.end_frame()
        self.frame_index += 1
        self.first_frame = False

    def reset(self) -> None:
        """Empty every cache and reset the policy and the frame counter."""
        for cache in self.caches:
            cache.reset()
        self.policy.reset()
        self.frame_index = 0
        self.first_frame = True

    def attach_arena(self, arena: Any, owner: str) -> list[KVCache]:
        """Keep every cache in pages of a node's `recon.memory.paged.KVArena` from now on (contents, counters and
        policy state carried over); returns the paged caches. Static memories keep their own fixed storage."""
        if self.static:
            raise ConfigError("static-shape caches keep their own fixed storage; they cannot move into a KV arena")
        from recon.memory.paged import PagedKVCache

        for i, cache in enumerate(self.caches):
            if not isinstance(cache, PagedKVCache):
                paged = PagedKVCache(arena, owner, cache.layer, cache.policy, cache.track_token_ids)
                paged.import_state(cache.export_state())
                self.caches[i] = paged
        return list(self.caches)

    def num_tokens(self) -> int:
        """Tokens held, summed over layers (each counted once, not per head)."""
        return sum(len(c) for c in self.caches)

    def nbytes(self) -> int:
        """Bytes of allocated cache storage over all layers."""
        return sum(c.nbytes() for c in self.caches)

    def export_state(self) -> dict[str, Any]:
        """Every cache's `export_state`, the frame counter and the policy's state (see `EvictionPolicy`)."""
        return {"frame_index": self.frame_index, "first_frame": self.first_frame, "static": self.static,
                "caches": [c.export_state() for c in self.caches], "policy": self.policy.export_state(),
                "policy_name": self.policy.name}

    def import_state(self, state: dict[str, Any]) -> None:
        """Restore an `export_state` of a memory with the same number of layers and the same policy."""
        from recon.errors import StateError

        if len(state["caches"]) != len(self.caches):
            raise StateError(f"streaming memory: the state has {len(state['caches'])} layers, this memory "
                             f"{len(self.caches)}")
        if state.get("policy_name", self.policy.name) != self.policy.name:
            raise StateError(f"streaming memory: the state was saved with policy {state['policy_name']!r}, this "
                             f"memory uses {self.policy.name!r}")
        if bool(state.get("static", False)) != self.static:
            raise StateError(f"streaming memory: the state was saved with static={state.get('static')}, this memory "
                             f"has static={self.static}")
        for cache, cs in zip(self.caches, state["caches"], strict=True):
            cache.import_state(cs)
        self.policy.import_state(state["policy"])
        self.frame_index = int(state["frame_index"])
        self.first_frame = bool(state.get("first_frame", self.frame_index == 0))
