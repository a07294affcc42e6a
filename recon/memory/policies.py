"""Eviction policies for the streaming KV caches (`recon.memory.kv_cache`): how a bounded memory decides what
to forget.

A policy is handed to `StreamingMemory` / `model.new_session(policy=..., camera_policy=...)`; the cache calls
`after_append(layer, cache, frame_index)` once per attention layer per frame, after the frame's K/V were appended
and before the frame attends, and the memory brackets every frame with `begin_frame` / `end_frame`.

Policies (names for `make_policy` and the `infinitevggt` backend's `policy` option):
- `unbounded` (`recon.memory.kv_cache.EvictionPolicy`): keep everything (StreamVGGT; memory grows per frame);
- `window` (`SlidingWindowPolicy`): the most recent `layer_budget` entries per layer;
- `sinks` (`AttentionSinkPolicy`): StreamingLLM-style attention sinks, here the whole first frame (the frame
  that defines the world frame), plus the most recent entries up to `layer_budget`;
- `infinitevggt` (`DiversityPruningPolicy`): InfiniteVGGT's training-free diversity pruning, reproducing
  AutoLab-SAI-SJTU/InfiniteVGGT@7f9a5a2 exactly (golden fixture `infinitevggt_tiny_pruned`; reference notes §4.1):
  - per-layer budgets before each frame: `int(softmax((1 - last_scores) / T) * total_budget)` in float32,
    T = 0.5, `last_scores` starting at zeros;
  - anchors: every entry of the layer's first frame, never evicted;
  - once a layer holds more than its budget (the new frame's own entries included), every head scores the
    non-anchor keys by <k_i/|k_i|, mean_j k_j/|k_j|> and keeps the `budget - anchors` *lowest* scores
    (the most diverse keys) in temporal order; V follows K;
  - only layers that pruned set their `last_scores` entry to float32(mean candidate score).

Static shapes (`StreamingMemory(static=True)`, for CUDA graphs and `torch.compile`): every policy here also runs on
`recon.memory.kv_cache.StaticKVCache`, deciding with device tensors only: budgets are computed on the device and
never read back, the kept entries become a keep mask (InfiniteVGGT: the `budget - anchors` lowest-ranked scores;
the window policies: anchors plus the last `budget - anchors` rows), and a layer that need not prune keeps every
valid row. The kept sets are the dynamic path's (ties aside: a stable sort instead of topk). One difference: the
storage is fixed, so an InfiniteVGGT layer budget above the capacity is clamped to it (counted in
`budget_clamped`; the dynamic path grows the storage instead).

Synchronisation: the published code calls `.item()` once per layer per frame (the mean score), which stalls
the GPU 24 times a frame. Here every per-layer quantity stays a device tensor: scores, kept indices, the mean
score and `last_scores`. Whether a layer prunes depends only on host integers (cache length, budget). The only
device-to-host read is the integer budget vector, needed for tensor shapes: it is computed on the device at the
end of a frame, copied asynchronously into pinned memory, and read at the start of the next frame (one read per
frame, normally already complete because the frame's outputs were read back in between).

All state is per session and cleared by `reset()` (the published code never resets anchors or scores, so a
second sequence on the same model behaves differently from the first).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from recon.errors import ConfigError
from recon.kernels.kv_prune import diversity_scores, diversity_scores_masked, ranks, select_kept
from recon.memory.kv_cache import EvictionPolicy, KVCache
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)

POLICIES = ("unbounded", "window", "sinks", "infinitevggt")
DEFAULT_TOTAL_BUDGET = 1_200_000
DEFAULT_TEMPERATURE = 0.5

# recorder(event, payload): "frame" (budgets of a frame), "layer" (one layer's decision), "frame_end".
Recorder = Callable[[str, dict[str, Any]], None]


class _AnchorMixin:
    """Tracks, per layer, how many leading entries belong to the session's first frame (the anchors).

    The first frame is the one with `frame_index == 0`; every append during it extends the anchors. For the
    aggregator caches (one append per frame) this is InfiniteVGGT's "all tokens of the first cached call"; for the
    camera-trunk caches in the reference mode (one append per refinement iteration) it covers all iterations.
    """

    def _reset_anchors(self) -> None:
        self._anchors: dict[int, int] = {}
        self._anchor_idx: dict[tuple[int, int, int, torch.device], torch.Tensor] = {}

    def _update_anchors(self, layer: int, cache: KVCache, frame_index: int) -> int:
        if frame_index == 0:  # nothing is evicted during the first frame: appended == held, no device read
            self._anchors[layer] = cache.appended_total
        return self._anchors.get(layer, 0)

    def anchor_count(self, layer: int) -> int:
        """Protected leading entries of `layer` (0 before its first frame)."""
        return self._anchors.get(layer, 0)

    def _export_anchors(self) -> dict[str, Any]:
        return {"anchors": dict(self._anchors)}

    def _import_anchors(self, state: dict[str, Any]) -> None:
        self._reset_anchors()
        self._anchors = {int(k): int(v) for k, v in state["anchors"].items()}

    def _keep_index(self, anchors: int, tail: torch.Tensor) -> torch.Tensor:
        """`[B,H,anchors + m]`: positions 0..anchors-1 followed by `tail [B,H,m]` (positions in the cache)."""
        B, H, _ = tail.shape
        key = (anchors, B, H, tail.device)
        head = self._anchor_idx.get(key)
        if head is None:
            head = torch.arange(anchors, device=tail.device).expand(B, H, anchors)
            self._anchor_idx = {key: head}  # one shape per session
        return torch.cat([head, tail], dim=-1)


class SlidingWindowPolicy(_AnchorMixin, EvictionPolicy):
    """Keep the most recent entries of every layer (no anchors).

    The simplest bounded memory: constant cost, but once frame 0 leaves the window nothing ties the output to
    the world frame any more, which is what the `sinks` variant fixes. The size is given in one of three ways
    (exactly one): entries per layer, a total over layers (split evenly, so it compares with InfiniteVGGT's
    total budget), or frames (in units of what the first frame appended, so the same policy fits the aggregator
    caches, 1 append of P tokens per frame, and the camera caches, one entry per refinement iteration).

    Args:
        layer_budget: entries kept per layer (anchors included for subclasses with anchors).
        total_budget: entries summed over layers; each layer keeps `total_budget // num_layers`.
        window_frames: frames kept besides the anchors.
    """

    name = "window"
    keep_first_frame = False

    def __init__(self, layer_budget: int | None = None, *, total_budget: int | None = None,
                 window_frames: int | None = None) -> None:
        given = [v for v in (layer_budget, total_budget, window_frames) if v is not None]
        if len(given) != 1 or given[0] < 1:
            raise ConfigError(f"{type(self).__name__}: give exactly one of layer_budget, total_budget, "
                              f"window_frames, >= 1 (got {layer_budget}, {total_budget}, {window_frames})")
        self.layer_budget = layer_budget
        self.total_budget = total_budget
        self.window_frames = window_frames
        self._warn = WarnOnce(logger)
        self._per_frame = 1  # cache appends per frame (use_static_shapes); survives reset
        self.reset()

    def reset(self) -> None:
        self._reset_anchors()
        self._num_layers = 1

    def begin_frame(self, frame_index: int, num_layers: int) -> None:
        self._num_layers = max(num_layers, 1)

    def export_state(self) -> dict[str, Any]:
        return {**self._export_anchors(), "num_layers": self._num_layers}

    def import_state(self, state: dict[str, Any]) -> None:
        self._import_anchors(state)
        self._num_layers = int(state["num_layers"])

    def use_static_shapes(self, capacity: int, appends_per_frame: int = 1) -> None:
        self._per_frame = appends_per_frame

    def static_capacity(self, layer: int, first_append: int) -> int:
        if self.window_frames is not None:  # frames of what the first frame appends
            return first_append * self._per_frame * (self.window_frames + int(self.keep_first_frame))
        return self.budget_of(layer)

    def budget_of(self, layer: int) -> int:
        """Entries `layer` may hold (anchors included)."""
        if self.layer_budget is not None:
            return self.layer_budget
        if self.total_budget is not None:
            return max(self.total_budget // self._num_layers, 1)
        assert self.window_frames is not None
        return max(self.anchor_count(layer), 1) * (self.window_frames + int(self.keep_first_frame))

    def after_append(self, layer: int, cache: KVCache, frame_index: int) -> None:
        first = self._update_anchors(layer, cache, frame_index)
        if frame_index == 0 and self.window_frames is not None:
            return  # the first frame defines the unit of the window
        anchors = first if self.keep_first_frame else 0
        budget = self.budget_of(layer)
        if cache.static:
            self._after_append_static(cache, anchors, budget)
            return
        n = len(cache)
        if n <= budget or n <= anchors:
            return
        window = max(budget - anchors, 0)
        if window == 0:
            self._warn("budget", "%s: layer budget %d <= %d anchor entries; only anchors are kept",
                       self.name, budget, anchors)
        B, H = cache.keys().shape[:2]
        tail = torch.arange(n - window, n, device=cache.keys().device).expand(B, H, window)
        cache.compact(self._keep_index(anchors, tail), ascending=True, skip=anchors)

    def _after_append_static(self, cache: KVCache, anchors: int, budget: int) -> None:
        """Anchors plus the last `budget - anchors` valid rows; within budget that is every valid row."""
        pos, length = cache.positions, cache.length
        keep = ((pos < anchors) | (pos >= length - max(budget - anchors, 0))) & cache.valid()
        B, H = cache.keys().shape[:2]
        cache.compact_mask_(keep.expand(B, H, -1))


class AttentionSinkPolicy(SlidingWindowPolicy):
    """StreamingLLM-style: the first frame's entries as attention sinks, plus the most recent entries.

    Args: as `SlidingWindowPolicy`; a budget in entries includes the sinks.
    """

    name = "sinks"
    keep_first_frame = True


def camera_window_policy(window_frames: int) -> AttentionSinkPolicy:
    """Bounded camera-trunk caches: frame 0's entries plus those of the last `window_frames` frames.

    The published code lets the camera-head cache grow (4 entries per frame and trunk layer, 64 KB per frame at
    full size in fp32): 2.6 GB and an O(frames) trunk attention after 10,000 frames. The camera token of frame 0
    defines the world frame, so it stays; recent frames carry the motion context. Works for both camera-cache
    modes: a frame is whatever the first frame appended (4 entries in "reference" mode, 1 in "per_iteration").
    """
    if window_frames < 1:
        raise ConfigError(f"camera window must be >= 1 frame, got {window_frames}")
    return AttentionSinkPolicy(window_frames=window_frames)


class _PendingBudgets:
    """An asynchronous device-to-host copy of the next frame's integer budgets (CUDA only).

    The pinned host buffer and the event are allocated once per session and reused every frame.
    """

    def __init__(self, num_layers: int) -> None:
        self.host = torch.empty(num_layers, dtype=torch.int64, pin_memory=True)
        self.event = torch.cuda.Event()
        self.pending = False

    def start(self, budgets: torch.Tensor) -> None:
        self.host.copy_(budgets, non_blocking=True)
        self.event.record()
        self.pending = True

    def result(self) -> list[int]:
        self.event.synchronize()
        self.pending = False
        return self.host.tolist()


class DiversityPruningPolicy(_AnchorMixin, EvictionPolicy):
    """InfiniteVGGT diversity pruning with per-layer budgets (see the module docstring for the exact rule).

    Args:
        total_budget: tokens summed over layers (1,200,000 in the published code, about 48 frames at 518x392
            per layer with 24 layers).
        temperature: softmax temperature of the budget split (0.5 published).
        impl: "torch" or "triton" for scores and compaction (default: Triton on CUDA, torch elsewhere).
        recorder: optional callback receiving every decision (tests, fixture logs). It reads tensors back to the
            host, so leave it None in production.
    """

    name = "infinitevggt"

    def __init__(self, total_budget: int = DEFAULT_TOTAL_BUDGET, temperature: float = DEFAULT_TEMPERATURE,
                 impl: str | None = None, recorder: Recorder | None = None) -> None:
        if total_budget < 1:
            raise ConfigError(f"infinitevggt: total budget must be >= 1 token, got {total_budget}")
        if not temperature > 0:
            raise ConfigError(f"infinitevggt: temperature must be > 0, got {temperature}")
        self.total_budget = int(total_budget)
        self.temperature = float(temperature)
        self.impl = impl
        self.recorder = recorder
        self._warn = WarnOnce(logger)
        self.static_layer_capacity: int | None = None  # set by use_static_shapes (StaticKVCache storage)
        self.reset()

    def reset(self) -> None:
        self._reset_anchors()
        self.last_scores: torch.Tensor | None = None  # float32 [layers], on the caches' device once known
        self.budgets: list[int] = []
        self._pending: _PendingBudgets | None = None
        self.host_reads = 0  # device-to-host reads of budgets (one per frame at most), for tests and stats
        self.budget_device: torch.Tensor | None = None  # static shapes: int64 [layers], never read back
        self.budget_clamped: torch.Tensor | None = None  # static shapes: layer-frames whose budget hit capacity

    def use_static_shapes(self, capacity: int, appends_per_frame: int = 1) -> None:
        if capacity < 1:
            raise ConfigError("infinitevggt with static shapes needs the per-layer capacity (entries a layer may "
                              "hold); the backend sizes it from the budget")
        if self.recorder is not None:
            raise ConfigError("infinitevggt: the recorder reads decisions back to the host; use dynamic shapes")
        self.static_layer_capacity = int(capacity)
        self._appends_per_frame = appends_per_frame

    def static_capacity(self, layer: int, first_append: int) -> int:
        # The first frame's entries (the anchors) are never evicted, whatever the budget.
        return max(self.static_layer_capacity, first_append * self._appends_per_frame)

    def export_state(self) -> dict[str, Any]:
        """Anchors, per-layer scores and the current budgets. A budget copy still in flight (CUDA) is not kept:
        the next frame recomputes it from `last_scores`, which gives the same integers."""
        scores = None if self.last_scores is None else self.last_scores.clone()
        clamped = None if self.budget_clamped is None else self.budget_clamped.clone()
        return {**self._export_anchors(), "last_scores": scores, "budgets": list(self.budgets),
                "host_reads": self.host_reads, "budget_clamped": clamped}

    def import_state(self, state: dict[str, Any]) -> None:
        self._import_anchors(state)
        self.last_scores = state["last_scores"]
        self.budgets = [int(b) for b in state["budgets"]]
        self.host_reads = int(state["host_reads"])
        self.budget_clamped = state.get("budget_clamped")
        self._pending = None  # static shapes: budget_device is recomputed from last_scores at the next frame

    def budget_prefloor(self, scores: torch.Tensor) -> torch.Tensor:
        """float32 `softmax((1 - scores) / T) * total_budget`, the reference's arithmetic before `int()`."""
        diversity = 1 - scores
        return torch.softmax(diversity / self.temperature, dim=0) * self.total_budget

    def begin_frame(self, frame_index: int, num_layers: int) -> None:
        if self.last_scores is None or self.last_scores.numel() != num_layers:
            self.last_scores = torch.zeros(num_layers, dtype=torch.float32)
            self._pending = None
        if self.static_layer_capacity is not None:
            raw = self.budget_prefloor(self.last_scores).to(torch.int64)
            self.budget_device = raw.clamp(max=self.static_layer_capacity)
            over = (raw > self.static_layer_capacity).sum()
            self.budget_clamped = over if self.budget_clamped is None else self.budget_clamped + over
            return
        if self._pending is not None and self._pending.pending:
            self.budgets = self._pending.result()
        else:
            self.budgets = self.budget_prefloor(self.last_scores).to(torch.int64).tolist()
        self.host_reads += 1
        if self.recorder is not None:
            self.recorder("frame", {"frame": frame_index, "budget": list(self.budgets),
                                    "budget_prefloor": self.budget_prefloor(self.last_scores).cpu(),
                                    "last_scores_before": self.last_scores.cpu().clone()})

    def after_append(self, layer: int, cache: KVCache, frame_index: int) -> None:
        if cache.static:
            self._after_append_static(layer, cache, frame_index)
            return
        n = len(cache)
        anchors = self._update_anchors(layer, cache, frame_index)
        budget = self.budgets[layer]
        if n <= budget or n <= anchors:  # within budget, or nothing but anchors (a first frame over budget)
            if self.recorder is not None:
                self.recorder("layer", {"frame": frame_index, "layer": layer, "budget": budget, "n_before": n,
                                        "n_after": n, "pruned": False, "anchors": anchors, "cache": cache})
            return
        keep = budget - anchors
        if keep < 0:
            self._warn("budget", "infinitevggt: layer %d budget %d is below its %d anchor tokens; keeping "
                            "only the anchors (raise --budget)", layer, budget, anchors)
            keep = 0
        scores = diversity_scores(cache.keys()[:, :, anchors:n], self.impl)
        kept = select_kept(scores, keep)
        keep_idx = self._keep_index(anchors, kept + anchors)
        cache.compact(keep_idx, ascending=True, skip=anchors)
        avg = scores.mean()
        assert self.last_scores is not None
        if self.last_scores.device != avg.device:
            self.last_scores = self.last_scores.to(avg.device)
        self.last_scores[layer] = avg.to(torch.float32)
        if self.recorder is not None:
            self.recorder("layer", {"frame": frame_index, "layer": layer, "budget": budget, "n_before": n,
                                    "n_after": len(cache), "pruned": True, "anchors": anchors, "cache": cache,
                                    "keep_idx": keep_idx, "scores": scores, "avg_score": avg})

    def _after_append_static(self, layer: int, cache: KVCache, frame_index: int) -> None:
        """The same rule on a `StaticKVCache`, decided on the device: prune iff length > budget and > anchors; keep
        the anchors and the `budget - anchors` lowest-ranked candidate scores; the mean candidate score becomes
        `last_scores[layer]` only when the layer pruned."""
        anchors = self._update_anchors(layer, cache, frame_index)
        keys = cache.keys()
        if self.last_scores is None or self.budget_device is None:
            raise RuntimeError("infinitevggt: after_append before begin_frame")
        if self.last_scores.device != keys.device:
            self.last_scores = self.last_scores.to(keys.device)
            self.budget_device = self.budget_device.to(keys.device)
        budget, length, valid = self.budget_device[layer], cache.length, cache.valid()
        prune = (length > budget) & (length > anchors)
        cand = valid[anchors:]
        scores = diversity_scores_masked(keys[:, :, anchors:], cand)
        keep_cand = ((ranks(scores) < (budget - anchors).clamp(min=0)) | ~prune) & cand
        B, H = keys.shape[:2]
        keep = torch.cat([valid[:anchors].expand(B, H, anchors), keep_cand], dim=-1)
        cache.compact_mask_(keep)
        total = torch.where(cand, scores, torch.zeros_like(scores)).sum()
        avg = total / (cand.sum() * B * H).clamp(min=1)
        self.last_scores[layer] = torch.where(prune, avg.to(torch.float32), self.last_scores[layer])

    def end_frame(self, frame_index: int) -> None:
        assert self.last_scores is not None
        if self.recorder is not None:
            self.recorder("frame_end", {"frame": frame_index, "last_scores_after": self.last_scores.cpu().clone()})
        if self.static_layer_capacity is not None:
            return  # static shapes: the next budgets are derived on the device in begin_frame
        if self.last_scores.is_cuda:
            # Next frame's budgets, derived on the device and fetched without blocking.
            if self._pending is None:
                self._pending = _PendingBudgets(self.last_scores.numel())
            self._pending.start(self.budget_prefloor(self.last_scores).to(torch.int64))


def make_policy(name: str, total_budget: int = DEFAULT_TOTAL_BUDGET, temperature: float = DEFAULT_TEMPERATURE,
                impl: str | None = None) -> EvictionPolicy:
    """A policy of the aggregator caches by name.

    Args:
        name: one of `POLICIES` ("diversity" is accepted for "infinitevggt").
        total_budget: tokens summed over the global-attention layers; the window policies give each layer an
            equal share, so all bounded policies hold the same memory.
        temperature, impl: InfiniteVGGT settings.
    """
    if name == "diversity":
        name = "infinitevggt"
    if name not in POLICIES:
        raise ConfigError(f"unknown memory policy {name!r}; known: {', '.join(POLICIES)}")
    if name == "unbounded":
        return EvictionPolicy()
    if name == "infinitevggt":
        return DiversityPruningPolicy(total_budget, temperature, impl=impl)
    cls = SlidingWindowPolicy if name == "window" else AttentionSinkPolicy
    return cls(total_budget=total_budget)
