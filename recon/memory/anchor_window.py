"""LingBot-Map's bounded streaming memory: anchor frames, a sliding window of frames and a trajectory of special
tokens, per global-attention layer, in one preallocated buffer.

The method (../shared/reference/lingbot_map.md §6, Robbyant/lingbot-map@4cd9860 `layers/attention.py`
`SDPAAttention._apply_kv_cache_eviction`): every stored frame appends all its tokens; once more than
`anchor_frames + window_frames` frames are held, the frames between the anchors and the newest `window_frames` are
evicted, but their first `trajectory_tokens` tokens (camera, registers, scale) stay, append-only, as the trajectory
memory. A frame attends to [trajectory, anchors, window] (itself included), keys cached after qk-norm and RoPE.

Why our own storage instead of `recon.memory.KVCache`: the reference rebuilds the whole cache with `torch.cat` in
every layer for every frame (its FlashInfer path needs paged kernels instead). Here one buffer per layer holds
```
[ anchors (A*P) | window ring (W*P) | trajectory (T*s) | scratch (P) ]
```
and a frame costs one P-token write plus, on eviction, one s-token copy; the attended keys are always one contiguous
prefix of the buffer (attention does not depend on key order), so nothing else is ever copied. The ring slots are
filled in order, so the prefix is contiguous while the memory fills up too.

- Non-keyframes in "skip" mode (`begin_step(..., store=False)`) are written to the scratch slot after the held prefix
  and attended with it, then forgotten (what the reference's FlashInfer path computes).
- `trajectory_frames` bounds the trajectory (the oldest evicted frame's specials are overwritten first); 0 keeps it
  unbounded like the reference, and then only the trajectory part of the buffer grows (by doubling).
- The plan of a step (which slot each frame goes to, which specials move) is computed once per step from host
  integers and executed by every layer, so every layer holds the same frames.

`PeekView` lets any `KVCache` be attended without storing (the camera-head caches of non-keyframes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from recon.errors import ConfigError, StateError

if TYPE_CHECKING:
    from recon.memory.kv_cache import KVCache

logger = logging.getLogger(__name__)

GROWTH_START_FRAMES = 64  # initial trajectory capacity (frames) when it is unbounded


@dataclass
class _Plan:
    """What every layer does in one step: ordered copies, then the length of the prefix to attend to."""

    num_frames: int
    ops: list[tuple[str, int, int]] = field(default_factory=list)  # ("frame", call_frame, dst) / ("special", src, dst)
    length: int = 0
    required: int = 0


class PeekView:
    """Attend to a `KVCache` plus new entries without storing them (`update` returns the concatenation)."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.cache) == 0:
            return k, v
        return torch.cat([self.cache.keys(), k], dim=2), torch.cat([self.cache.values(), v], dim=2)


class AnchorWindowLayer:
    """One layer's buffer; `update(k, v)` runs the memory's current plan (see the module docstring)."""

    def __init__(self, memory: AnchorWindowMemory, layer: int) -> None:
        self.memory = memory
        self.layer = layer
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._length = 0

    def __len__(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return 0 if self._k is None else int(self._k.shape[2])

    def reset(self) -> None:
        """Forget the contents; the storage is kept (a new session reuses it without allocating)."""
        self._length = 0

    def _ensure(self, k: torch.Tensor, v: torch.Tensor, required: int) -> None:
        if self._k is not None:
            mismatch = self._k.shape[:2] != k.shape[:2] or self._k.shape[3] != k.shape[3] \
                or self._k.dtype != k.dtype or self._v.dtype != v.dtype or self._k.device != k.device
            if mismatch and self._length == 0:  # a new session of another shape: start from fresh storage
                self._k = self._v = None
            elif mismatch:
                raise ConfigError(f"anchor-window cache layer {self.layer}: K/V {tuple(k.shape)} {k.dtype} on "
                                  f"{k.device} do not match the storage {tuple(self._k.shape)} {self._k.dtype}; batch, "
                                  "heads, head_dim, dtype and device must stay fixed within a session (reset first)")
            elif required <= self.capacity:
                return
        capacity = max(required, self.memory.capacity_tokens(grow_from=self.capacity))
        new_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
        new_v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
        if self._k is not None and self._length:
            new_k[:, :, :self._length].copy_(self._k[:, :, :self._length])
            new_v[:, :, :self._length].copy_(self._v[:, :, :self._length])
        self._k, self._v = new_k, new_v

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (or peek) the step's frames `k, v [B, H, n*P, D]`; returns the K/V views to attend to."""
        plan = self.memory.plan
        P = self.memory.tokens_per_frame
        if plan is None or k.shape[2] != plan.num_frames * P:
            raise ConfigError(f"anchor-window cache layer {self.layer}: got {k.shape[2]} tokens, the step announced "
                              f"{0 if plan is None else plan.num_frames} frames of {P} (call begin_step first)")
        self._ensure(k, v, plan.required)
        assert self._k is not None and self._v is not None
        s = self.memory.trajectory_tokens
        for kind, a, dst in plan.ops:
            if kind == "frame":
                self._k[:, :, dst:dst + P].copy_(k[:, :, a * P:(a + 1) * P])
                self._v[:, :, dst:dst + P].copy_(v[:, :, a * P:(a + 1) * P])
            else:
                self._k[:, :, dst:dst + s].copy_(self._k[:, :, a:a + s])
                self._v[:, :, dst:dst + s].copy_(self._v[:, :, a:a + s])
        if self.memory.storing:
            self._length = plan.length
        return self._k[:, :, :plan.length], self._v[:, :, :plan.length]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._k, self._v) if t is not None)

    def state_tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The held prefix (physical layout) as CPU copies, or None when empty."""
        if self._k is None or not self._length:
            return None
        return self._k[:, :, :self._length].cpu().clone(), self._v[:, :, :self._length].cpu().clone()

    def load_tensors(self, k: torch.Tensor, v: torch.Tensor, device: torch.device, required: int) -> None:
        k, v = k.to(device), v.to(device)
        self._k = self._v = None
        self._length = 0
        self._ensure(k, v, max(required, k.shape[2]))
        assert self._k is not None and self._v is not None
        self._k[:, :, :k.shape[2]].copy_(k)
        self._v[:, :, :v.shape[2]].copy_(v)
        self._length = int(k.shape[2])


class AnchorWindowMemory:
    """The anchor / window / trajectory memory of all global layers of one stream.

    Args:
        num_layers: global-attention layers (one buffer each).
        anchor_frames: first stored frames kept for good (`kv_cache_scale_frames`, 8 published).
        window_frames: most recent stored frames kept in full (`kv_cache_sliding_window`, 64 published).
        trajectory_tokens: leading tokens of an evicted frame kept (its special tokens: 6; 1 = camera only;
            0 = no trajectory memory).
        trajectory_frames: evicted frames whose tokens are kept (0: unbounded, as the reference).
    """

    def __init__(self, num_layers: int, anchor_frames: int, window_frames: int, trajectory_tokens: int,
                 trajectory_frames: int = 0) -> None:
        if anchor_frames < 0 or window_frames < 1 or trajectory_tokens < 0 or trajectory_frames < 0:
            raise ConfigError(f"anchor-window memory needs anchor_frames >= 0, window_frames >= 1, trajectory sizes "
                              f">= 0; got {anchor_frames}, {window_frames}, {trajectory_tokens}, {trajectory_frames}")
        self.anchor_frames = anchor_frames
        self.window_frames = window_frames
        self.trajectory_tokens = trajectory_tokens
        self.trajectory_frames = trajectory_frames
        self.layers = [AnchorWindowLayer(self, i) for i in range(num_layers)]
        self.tokens_per_frame = 0
        self.plan: _Plan | None = None
        self.storing = True
        self.reset()

    # -- container protocol used by the aggregator -------------------------------------------------------------
    def __getitem__(self, layer: int) -> AnchorWindowLayer:
        return self.layers[layer]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[AnchorWindowLayer]:
        return iter(self.layers)

    # -- logical state -----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every frame (storage is kept for the next session of the same size)."""
        self.anchor_ids: list[int] = []
        self.ring_ids: list[int] = [-1] * self.window_frames
        self.ring_head = 0
        self.ring_count = 0
        self.traj_ids: list[int] = []  # physical slot order
        self.traj_head = 0  # oldest slot once a bounded trajectory is full
        self.plan = None
        for layer in self.layers:
            layer.reset()

    def _base(self) -> int:
        return (self.anchor_frames + self.window_frames) * self.tokens_per_frame

    def held_tokens(self) -> int:
        """Tokens each layer holds (and the next frame attends to, besides itself)."""
        P = self.tokens_per_frame
        if self.ring_count < self.window_frames:
            return (len(self.anchor_ids) + self.ring_count) * P
        return self._base() + len(self.traj_ids) * self.trajectory_tokens

    def capacity_tokens(self, grow_from: int = 0) -> int:
        """Buffer size in tokens: everything bounded at once; an unbounded trajectory doubles from its start size."""
        P, s = self.tokens_per_frame, self.trajectory_tokens
        if self.trajectory_frames:
            return self._base() + self.trajectory_frames * s + P
        have = max(grow_from - self._base() - P, 0) // max(s, 1)
        frames = max(GROWTH_START_FRAMES, 2 * have)
        return self._base() + frames * s + P

    def cache_frame_ids(self) -> list[int]:
        """Frames held in full: anchors, then the window oldest first."""
        W = self.window_frames
        ring = [self.ring_ids[(self.ring_head + i) % W] for i in range(self.ring_count)]
        return list(self.anchor_ids) + ring

    def trajectory_frame_ids(self) -> list[int]:
        """Evicted frames whose special tokens are held, oldest first."""
        n = len(self.traj_ids)
        return [self.traj_ids[(self.traj_head + i) % n] for i in range(n)] if n else []

    def num_tokens(self) -> int:
        """Tokens held summed over layers."""
        return sum(len(layer) for layer in self.layers)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    # -- one step ---------------------------------------------------------------------------------------------
    def begin_step(self, frame_ids: Sequence[int], tokens_per_frame: int, store: bool = True) -> None:
        """Plan the step of `frame_ids` (P tokens each): stored (with eviction) or only attended (`store=False`)."""
        if self.tokens_per_frame and tokens_per_frame != self.tokens_per_frame and self.held_tokens():
            raise ConfigError(f"anchor-window memory: frames changed from {self.tokens_per_frame} to "
                              f"{tokens_per_frame} tokens inside a session (reset first)")
        self.tokens_per_frame = P = tokens_per_frame
        plan = _Plan(num_frames=len(frame_ids))
        self.storing = store
        if not store:
            if len(frame_ids) != 1:
                raise ConfigError("anchor-window memory: only single frames can be attended without storing")
            start = self.held_tokens()
            plan.ops.append(("frame", 0, start))
            plan.length = start + P
            plan.required = max(start + P, self.capacity_tokens() if self.trajectory_frames else 0)
            self.plan = plan
            return
        for j, fid in enumerate(frame_ids):
            plan.ops.append(("frame", j, self._store(fid, plan)))
        plan.length = self.held_tokens()
        plan.required = max(plan.length, max((dst for _, _, dst in plan.ops), default=0) + P)
        if self.trajectory_frames:
            plan.required = max(plan.required, self.capacity_tokens())
        else:
            plan.required = max(plan.required, self._base() + len(self.traj_ids) * self.trajectory_tokens + P)
        self.plan = plan

    def _store(self, fid: int, plan: _Plan) -> int:
        """Place frame `fid`; returns its destination token offset (evicting the oldest window frame if full)."""
        P, A, W = self.tokens_per_frame, self.anchor_frames, self.window_frames
        if len(self.anchor_ids) < A:
            self.anchor_ids.append(fid)
            return (len(self.anchor_ids) - 1) * P
        if self.ring_count < W:
            slot = (self.ring_head + self.ring_count) % W
            self.ring_count += 1
        else:
            slot = self.ring_head
            self.ring_head = (self.ring_head + 1) % W
            self._evict(self.ring_ids[slot], (A + slot) * P, plan)
        self.ring_ids[slot] = fid
        return (A + slot) * P

    def _evict(self, fid: int, src: int, plan: _Plan) -> None:
        s = self.trajectory_tokens
        if s == 0:
            return
        if self.trajectory_frames and len(self.traj_ids) == self.trajectory_frames:
            slot = self.traj_head
            self.traj_head = (self.traj_head + 1) % self.trajectory_frames
            self.traj_ids[slot] = fid
        else:
            slot = len(self.traj_ids)
            self.traj_ids.append(fid)
        plan.ops.append(("special", src, self._base() + slot * s))

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(meta, arrays): the logical state and each layer's held K/V prefix."""
        meta = {"anchor_ids": list(self.anchor_ids), "ring_ids": list(self.ring_ids), "ring_head": self.ring_head,
                "ring_count": self.ring_count, "traj_ids": list(self.traj_ids), "traj_head": self.traj_head,
                "tokens_per_frame": self.tokens_per_frame}
        arrays: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            kv = layer.state_tensors()
            if kv is not None:
                arrays[f"layer{i}.k"], arrays[f"layer{i}.v"] = kv
        return meta, arrays

    def load_state(self, meta: dict[str, Any], arrays: dict[str, torch.Tensor], device: torch.device) -> None:
        """Restore `state()`; the sizes must be this memory's (checked), the tensors go to `device`."""
        if len(meta["ring_ids"]) != self.window_frames or len(meta["anchor_ids"]) > self.anchor_frames or (
                self.trajectory_frames and len(meta["traj_ids"]) > self.trajectory_frames):
            raise StateError("anchor-window memory state does not fit this memory's anchor/window/trajectory sizes")
        self.reset()
        self.anchor_ids = [int(i) for i in meta["anchor_ids"]]
        self.ring_ids = [int(i) for i in meta["ring_ids"]]
        self.ring_head, self.ring_count = int(meta["ring_head"]), int(meta["ring_count"])
        self.traj_ids = [int(i) for i in meta["traj_ids"]]
        self.traj_head = int(meta["traj_head"])
        self.tokens_per_frame = int(meta["tokens_per_frame"])
        held = self.held_tokens()
        for i, layer in enumerate(self.layers):
            k, v = arrays.get(f"layer{i}.k"), arrays.get(f"layer{i}.v")
            if held == 0:
                continue
            if k is None or v is None or k.shape[2] != held:
                raise StateError(f"anchor-window memory state: layer {i} K/V missing or not {held} tokens long")
            layer.load_tensors(k, v, device, self.capacity_tokens() if self.trajectory_frames else held)
