"""One model call for many streaming sessions: the stream batch of a serving node (issue 15).

N cameras on one device otherwise cost N forward passes of a model whose per-frame parts (patch embedding, frame
attention, the MLPs, camera and dense heads) are the same computation on different images. `step_batch` stacks
one frame of each session into one `[N,3,H,W]` batch and runs those parts once; the global attention of each
session still reads only its own KV cache, whose length differs from session to session, through
`recon.kernels.attention.varlen_attention` (one block-diagonal xformers call on CUDA, one call per session on CPU).

How: `BatchedMemory` looks like a `StreamingMemory` to the aggregator (`len`, `[layer]`, `first_frame`, one flag
per session), and each of its layers is a `BatchedLayerCache`, which the attention layer recognises (`batched`):
it appends element i's K/V to session i's cache (running that session's eviction policy, as the unbatched step
does) and attends element i to it. Every session's frame bookkeeping (`begin_step`/`end_step`) is its own.

Equality with unbatched steps: every operation is per element, so the only difference is the batch size handed to
the same GEMMs, whose blocking (and so float32 summation order) may change with it: float32 rounding noise,
bounded in tests/recon/models/test_batched_step.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from recon.errors import BackendError
from recon.kernels.attention import AttentionImpl, varlen_attention
from recon.memory.kv_cache import KVCache, StreamingMemory
from recon.models.streaming import StreamingSession, model_step


class BatchedLayerCache:
    """One attention layer's caches of N sessions; batch element i belongs to `caches[i]`."""

    batched = True  # recon.models.layers.attention.Attention.forward dispatches on this

    def __init__(self, caches: Sequence[KVCache]) -> None:
        self.caches = list(caches)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: AttentionImpl | None,
               impl_masked: AttentionImpl | None) -> torch.Tensor:
        """Append element i's `k`/`v [N,H,T,D]` to cache i (its policy runs), then attend `q [N,H,T,D]` to it."""
        if q.shape[0] != len(self.caches):
            raise ValueError(f"batched cache of {len(self.caches)} sessions got a batch of {q.shape[0]}")
        keys, values, masks = [], [], []
        for i, cache in enumerate(self.caches):
            ki, vi = cache.update(k[i:i + 1], v[i:i + 1])
            keys.append(ki)
            values.append(vi)
            key_mask = getattr(cache, "key_mask", None)
            masks.append(key_mask() if key_mask is not None else None)
        return varlen_attention(q, keys, values, masks, impl=impl, impl_masked=impl_masked)


class BatchedMemory:
    """N sessions' `StreamingMemory`s seen as one memory of batch N (what `Aggregator.forward_step` reads)."""

    def __init__(self, memories: Sequence[StreamingMemory]) -> None:
        depths = {len(m) for m in memories}
        if len(depths) != 1:
            raise ValueError(f"batched memories differ in depth: {sorted(depths)}")
        self.layers = [BatchedLayerCache([m[i] for m in memories]) for i in range(depths.pop())]
        self.first_frame = [m.first_frame for m in memories]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer: int) -> BatchedLayerCache:
        return self.layers[layer]


def _camera_caches(sessions: Sequence[StreamingSession]) -> list[list[BatchedLayerCache]]:
    rows = [s.camera_caches for s in sessions]
    return [[BatchedLayerCache([r[it][layer] for r in rows]) for layer in range(len(rows[0][it]))]
            for it in range(len(rows[0]))]


def step_batch(sessions: Sequence[StreamingSession], images: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """Step every session by its own frame in one model call; returns what each `session.step` would.

    Args:
        sessions: distinct sessions over one model (same resolution; lengths and policies may differ).
        images: one `[3,H,W]` (or `[1,3,H,W]`) frame per session, same size, model dtype and device.

    Returns:
        per session the dict of `StreamingSession.step` (batch dimension 1).

    Raises:
        BackendError: sessions on different models, a repeated session, or frames of different sizes; nothing
            is stepped then.
    """
    if len(sessions) != len(images) or not sessions:
        raise BackendError(f"step_batch needs one frame per session, got {len(sessions)} sessions and "
                           f"{len(images)} frames")
    if len(sessions) == 1:
        return [sessions[0].step(images[0])]
    model = sessions[0].model
    if any(s.model is not model for s in sessions) or len({id(s) for s in sessions}) != len(sessions):
        raise BackendError("step_batch: sessions must be distinct and share one model")
    checked = [s.check_image(im) for s, im in zip(sessions, images, strict=True)]
    if any(im.shape[0] != 1 for im, _ in checked) or len({hw for _, hw in checked}) != 1:
        raise BackendError(f"step_batch: one frame per session, all of one size; got "
                           f"{[tuple(im.shape) for im, _ in checked]}")
    opened = [s.begin_step(im) for s, (im, _) in zip(sessions, checked, strict=True)]
    batch = torch.cat([im for im, _, _ in opened])
    hw = opened[0][1]
    with torch.inference_mode():
        memory = BatchedMemory([s.memory for s in sessions])
        cameras = _camera_caches(sessions) if model.camera_head is not None else []
        out = model_step(model, batch, hw, memory, cameras, model.head_layers)
    for s in sessions:
        s.end_step()
    results = []
    for i, (_, _, frame_index) in enumerate(opened):
        item: dict[str, Any] = {"frame_index": frame_index}
        for key, value in out.items():
            item[key] = [t[i:i + 1] for t in value] if isinstance(value, list) else value[i:i + 1]
        results.append(item)
    return results
