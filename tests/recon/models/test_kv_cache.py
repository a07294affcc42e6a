"""KVCache / StreamingMemory: preallocated doubling storage, per-head compaction, token ids, policy hook order."""

from __future__ import annotations

import pytest
import torch

from recon.memory import EvictionPolicy, KVCache, StreamingMemory


def _kv(t: int, start: float = 0.0, b: int = 1, h: int = 2, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    base = torch.arange(t, dtype=torch.float64) + start
    k = base.view(1, 1, t, 1).expand(b, h, t, d).clone()
    return k, -k


def test_append_grows_by_doubling_and_keeps_contents() -> None:
    cache = KVCache(capacity=0)
    capacities = []
    for step in range(6):
        cache.append(*_kv(5, start=5 * step))
        capacities.append(cache.capacity)
    assert len(cache) == 30
    assert capacities == [5, 10, 20, 20, 40, 40]  # reallocations only when full, each at least doubling
    assert torch.equal(cache.keys()[0, 0, :, 0], torch.arange(30, dtype=torch.float64))
    assert torch.equal(cache.values(), -cache.keys())


def test_views_share_storage_no_copy_per_append() -> None:
    cache = KVCache(capacity=64)
    cache.append(*_kv(5))
    ptr = cache.keys().data_ptr()
    cache.append(*_kv(5, start=5))
    assert cache.keys().data_ptr() == ptr  # same preallocated buffer
    assert cache.capacity == 64


def test_compact_keeps_different_tokens_per_head_in_place() -> None:
    cache = KVCache(capacity=16, track_token_ids=True)
    cache.append(*_kv(8))
    ptr = cache.keys().data_ptr()
    keep = torch.tensor([[[0, 2, 5], [1, 6, 7]]])
    cache.compact(keep)
    assert len(cache) == 3 and cache.keys().data_ptr() == ptr
    assert cache.keys()[0, 0, :, 0].tolist() == [0, 2, 5]
    assert cache.keys()[0, 1, :, 0].tolist() == [1, 6, 7]
    assert cache.values()[0, 1, :, 0].tolist() == [-1, -6, -7]
    assert cache.token_ids().tolist() == [[[0, 2, 5], [1, 6, 7]]]
    cache.append(*_kv(2, start=8))  # ids keep counting appended tokens
    assert cache.token_ids()[0, 0].tolist() == [0, 2, 5, 8, 9]
    with pytest.raises(ValueError):
        cache.compact(torch.tensor([0, 1]))


class _Recorder(EvictionPolicy):
    """Keeps the last `keep` entries of every layer and records the hook calls."""

    name = "recorder"

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.calls: list[tuple] = []

    def reset(self) -> None:
        self.calls.append(("reset",))

    def begin_frame(self, frame_index: int, num_layers: int) -> None:
        self.calls.append(("begin", frame_index, num_layers))

    def after_append(self, layer: int, cache: KVCache, frame_index: int) -> None:
        self.calls.append(("after_append", layer, frame_index, len(cache)))
        n = len(cache)
        if n > self.keep:
            idx = torch.arange(n - self.keep, n).expand(*cache.keys().shape[:2], -1)
            cache.compact(idx)

    def end_frame(self, frame_index: int) -> None:
        self.calls.append(("end", frame_index))


def test_policy_runs_after_append_before_attention_once_per_layer() -> None:
    policy = _Recorder(keep=6)
    memory = StreamingMemory(2, policy)
    for frame in range(2):
        memory.begin_frame()
        for layer in range(2):
            k, v = memory[layer].update(*_kv(4, start=4 * frame))
            assert k.shape[2] == min(6, 4 * (frame + 1))  # attention sees the pruned cache
        memory.end_frame()
    assert policy.calls == [
        ("begin", 0, 2), ("after_append", 0, 0, 4), ("after_append", 1, 0, 4), ("end", 0),
        ("begin", 1, 2), ("after_append", 0, 1, 8), ("after_append", 1, 1, 8), ("end", 1),
    ]
    assert memory.num_tokens() == 12
    memory.reset()
    assert memory.num_tokens() == 0 and memory.frame_index == 0 and policy.calls[-1] == ("reset",)
