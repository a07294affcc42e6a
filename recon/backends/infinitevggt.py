"""`infinitevggt` backend: StreamVGGT weights with InfiniteVGGT's bounded, pruned KV memory (the default learned
backend of recon).

This is the `streamvggt` backend (recon.backends.streamvggt: preprocessing, streaming session, pose conversion to
`T_world_cam`, results; subclassed, not copied) with two eviction policies plugged into its session
(recon.memory.policies):
- the aggregator's global-attention caches use InfiniteVGGT diversity pruning at a total token budget
  (default 1,200,000 as published: about 48 frames per layer at 518x392), so memory and per-frame time stop
  growing once the budget is reached;
- the camera-trunk caches, which the published code lets grow without bound (4 entries per frame and layer),
  keep frame 0 plus the last `camera_window` frames (default 128). `camera_window=0` keeps them unbounded, which
  reproduces the published code (and the golden fixture) exactly.

Every option of the `streamvggt` backend applies (weights, model_config "full"/"tiny", random_init, device,
dtype, image_width, camera_cache, points, seed). A tiny random model for smoke runs:
    recon replay SEQ --backend infinitevggt --backend-opt model_config=tiny --backend-opt budget=2000

Options added here:
    budget: total tokens over the global-attention layers (default 1,200,000).
    policy: "infinitevggt" (default), or "sinks" / "window" / "unbounded" baselines at the same budget.
    temperature: softmax temperature of the per-layer budget split (0.5 published).
    camera_window: frames kept in the camera-trunk caches besides frame 0 (0: unbounded, as published).
    capacity: per-layer preallocated cache storage in tokens (default: 1.25 x the even per-layer share of the
        budget, so the storage is allocated once and never grows; the per-layer budgets move around that share).
    static: fixed-shape caches (recon.memory.kv_cache.StaticKVCache): no host synchronisation and the same shapes
        every frame, for CUDA graphs / torch.compile; a layer budget above `capacity` is clamped to it.
    compile: `--compile`: static caches and the step compiled once with torch.compile (CUDA graphs on CUDA); a
        dict gives torch.compile options.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from recon.backends.configs import InfiniteVGGTBackendConfig
from recon.backends.runtime import default_image_width, pick_autocast_dtype, pick_device
from recon.backends.streamvggt import StreamVGGTBackend
from recon.memory.policies import camera_window_policy, make_policy
from recon.types import BackendStats

logger = logging.getLogger(__name__)

CAPACITY_HEADROOM = 1.25


class InfiniteVGGTBackend(StreamVGGTBackend):
    """The streamvggt backend with bounded memory; `stats()` adds the budget and the current per-layer budgets."""

    name = "infinitevggt"

    def __init__(self, model: Any, *, budget: int, camera_window: int | None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.budget = budget
        self.camera_window = camera_window or 0

    def _state_config(self) -> dict[str, Any]:
        return {**super()._state_config(), "budget": self.budget, "camera_window": self.camera_window,
                "temperature": getattr(self.session.memory.policy, "temperature", None)}

    def stats(self) -> BackendStats:
        s = super().stats()
        session = self.session
        s.extra.update({"budget": self.budget, "camera_window": self.camera_window,
                        "camera_cache_entries": session.camera_cache_lengths()[0] if session.camera_caches else []})
        budgets = getattr(session.memory.policy, "budgets", None)
        if budgets:
            s.extra["layer_budgets"] = list(budgets)
        return s


def create(config: InfiniteVGGTBackendConfig) -> InfiniteVGGTBackend:
    """Backend factory (`--backend infinitevggt`); the options are recon.backends.configs.InfiniteVGGTBackendConfig."""
    from recon.models.vggt import build_vggt

    budget, policy, camera_window, capacity = config.budget, config.policy, config.camera_window, config.capacity
    model_config, camera_cache, compile = config.model_config, config.camera_cache, config.compile
    aggregator_policy = make_policy(policy, budget, config.temperature)
    camera_policy = camera_window_policy(camera_window) if camera_window else None
    dev = pick_device(config.device)
    model = build_vggt(weights=config.weights, weights_name="streamvggt", model_config=model_config, causal=True,
                       random_init=config.random_init, seed=config.seed, device=dev)
    layers = model.config.aggregator.depth
    if capacity is None:
        capacity = math.ceil(CAPACITY_HEADROOM * budget / layers) if policy != "unbounded" else 0
    logger.info("infinitevggt: policy %s, budget %d tokens over %d layers (%d preallocated per layer), camera "
                "cache %s", aggregator_policy.name, budget, layers, capacity,
                f"frame 0 + {camera_window} frames" if camera_window else "unbounded (published behaviour)")
    backend = InfiniteVGGTBackend(model, budget=budget, camera_window=camera_window, device=dev,
                                  autocast_dtype=pick_autocast_dtype(config.dtype, dev),
                                  image_width=config.image_width or default_image_width(model_config),
                                  camera_cache=camera_cache, capacity=int(capacity), policy=aggregator_policy,
                                  points=config.points, camera_policy=camera_policy,
                                  static=config.static or bool(compile),
                                  compile=compile)
    camera_memory = backend.session.camera_memory
    if camera_window and camera_memory is not None and model.camera_head is not None:
        # Frame 0 + the window, plus the entry appended before each compaction: allocated once, never doubled.
        per_frame = model.camera_head.num_iterations if camera_cache == "reference" else 1
        for cache in camera_memory:
            cache.initial_capacity = (camera_window + 1) * per_frame + 1
    return backend
