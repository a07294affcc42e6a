"""Eviction policies on StreamingMemory with synthetic keys, and on a tiny random StreamVGGT session."""

from __future__ import annotations

import pytest
import torch

from recon.errors import ConfigError
from recon.kernels.kv_prune import diversity_scores_reference
from recon.memory import EvictionPolicy, StreamingMemory
from recon.memory.policies import (
    AttentionSinkPolicy,
    DiversityPruningPolicy,
    SlidingWindowPolicy,
    camera_window_policy,
    make_policy,
)

P = 5  # tokens per frame in the synthetic streams


def stream(memory: StreamingMemory, frames: int, seed: int = 0, H: int = 2, D: int = 8) -> list[list[torch.Tensor]]:
    """Feed `frames` frames of random K (V = -K) to every layer; returns each layer's K per frame."""
    gen = torch.Generator().manual_seed(seed)
    history: list[list[torch.Tensor]] = [[] for _ in memory]
    for _ in range(frames):
        memory.begin_frame()
        for layer, cache in enumerate(memory):
            k = torch.randn(1, H, P, D, generator=gen, dtype=torch.float64) + layer
            history[layer].append(k)
            cache.update(k, -k)
        memory.end_frame()
    return history


def test_sliding_window_keeps_the_most_recent_tokens() -> None:
    memory = StreamingMemory(2, SlidingWindowPolicy(12), track_token_ids=True)
    history = stream(memory, 7)
    assert len(list(memory)) == 2  # the loop below must check both layers
    for layer, cache in enumerate(memory):
        assert len(cache) == 12
        assert cache.token_ids()[0, 0].tolist() == list(range(35 - 12, 35))
        assert torch.equal(cache.keys(), torch.cat(history[layer], dim=2)[:, :, -12:])
        assert torch.equal(cache.values(), -cache.keys())


def test_sinks_keep_frame_zero_and_the_recent_window() -> None:
    policy = AttentionSinkPolicy(12)
    memory = StreamingMemory(1, policy, track_token_ids=True)
    stream(memory, 9)
    ids = memory[0].token_ids()[0, 1].tolist()
    assert ids == list(range(P)) + list(range(45 - 7, 45))
    assert policy.anchor_count(0) == P


def reference_prune(keys: torch.Tensor, anchors: int, budget: int) -> torch.Tensor:
    """Straight from the definition: keep anchors and the `budget - anchors` lowest-scoring candidates, sorted."""
    scores = diversity_scores_reference(keys[:, :, anchors:])
    kept = torch.topk(-scores, budget - anchors, dim=-1).indices.sort(-1).values + anchors
    return torch.cat([torch.arange(anchors).expand(*kept.shape[:2], anchors), kept], dim=-1)


def test_diversity_pruning_follows_the_definition_frame_by_frame() -> None:
    policy = DiversityPruningPolicy(total_budget=40, temperature=0.5)
    memory = StreamingMemory(2, policy, track_token_ids=True)
    gen = torch.Generator().manual_seed(3)
    mirror = [torch.empty(1, 2, 0, 8, dtype=torch.float64) for _ in range(2)]  # our own uncompressed replay
    for frame in range(8):
        memory.begin_frame()
        budgets = list(policy.budgets)
        if frame == 0:
            assert budgets == [20, 20]  # softmax of zeros: the total split evenly
        for layer, cache in enumerate(memory):
            k = torch.randn(1, 2, P, 8, generator=gen, dtype=torch.float64)
            mirror[layer] = torch.cat([mirror[layer], k], dim=2)
            cache.update(k, 2 * k)
            if mirror[layer].shape[2] > budgets[layer]:
                keep = reference_prune(mirror[layer], P, budgets[layer])
                mirror[layer] = torch.gather(mirror[layer], 2, keep.unsqueeze(-1).expand(-1, -1, -1, 8))
            assert torch.equal(cache.keys(), mirror[layer])
            assert torch.equal(cache.values(), 2 * mirror[layer])
            assert len(cache) <= max(budgets[layer], P)
            assert cache.token_ids()[0, :, :P].tolist() == [list(range(P))] * 2  # anchors never evicted
        memory.end_frame()
    assert policy.host_reads == 8
    assert bool((policy.last_scores > 0).all())
    assert sum(policy.budgets) <= 40


def test_budgets_move_towards_the_more_diverse_layer() -> None:
    policy = DiversityPruningPolicy(total_budget=100)
    policy.begin_frame(0, 2)
    policy.last_scores = torch.tensor([0.9, 0.1])  # layer 1: keys far less alike
    policy.begin_frame(1, 2)
    assert policy.budgets[1] > policy.budgets[0]
    want = torch.softmax((1 - torch.tensor([0.9, 0.1])) / 0.5, 0) * 100
    assert policy.budgets == want.to(torch.int64).tolist()


def test_only_layers_that_pruned_update_their_score() -> None:
    policy = DiversityPruningPolicy(total_budget=2 * 12)
    memory = StreamingMemory(2, policy)
    for _ in range(2):
        memory.begin_frame()
        memory[0].update(torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4))  # 14 > 12 at frame 1: prunes
        memory[1].update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))
        memory.end_frame()
    assert policy.last_scores[0] > 0 and policy.last_scores[1] == 0
    assert len(memory[0]) == 12 and len(memory[1]) == 6


def test_reset_forgets_anchors_scores_and_budgets() -> None:
    policy = DiversityPruningPolicy(total_budget=30)
    memory = StreamingMemory(2, policy, track_token_ids=True)
    stream(memory, 6, seed=1)
    assert policy.budgets != [15, 15]
    memory.reset()
    assert policy.last_scores is None and policy.anchor_count(0) == 0
    first = stream(memory, 6, seed=1)
    again = [c.keys().clone() for c in memory]
    memory.reset()
    assert torch.equal(torch.cat(stream(memory, 6, seed=1)[0], 2), torch.cat(first[0], 2))
    assert all(torch.equal(c.keys(), a) for c, a in zip(memory, again, strict=True))  # same run, same result


def test_camera_window_policy_bounds_the_reference_camera_cache() -> None:
    policy = camera_window_policy(window_frames=3)
    memory = StreamingMemory(1, policy, track_token_ids=True)
    for _ in range(10):
        memory.begin_frame()
        for _it in range(4):  # reference mode: every refinement iteration appends to the same cache
            memory[0].update(torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4))
        memory.end_frame()
    assert memory[0].token_ids()[0, 0].tolist() == [0, 1, 2, 3] + list(range(40 - 12, 40))


def test_make_policy_names_and_errors() -> None:
    assert type(make_policy("unbounded")) is EvictionPolicy
    assert isinstance(make_policy("diversity", 100), DiversityPruningPolicy)
    window = make_policy("window", 100)
    window.begin_frame(0, 4)
    assert isinstance(window, SlidingWindowPolicy) and window.budget_of(0) == 25
    assert isinstance(make_policy("sinks", 100), AttentionSinkPolicy)
    with pytest.raises(ConfigError, match="unknown memory policy"):
        make_policy("lru")
    with pytest.raises(ConfigError):
        DiversityPruningPolicy(total_budget=0)
    with pytest.raises(ConfigError):
        SlidingWindowPolicy(12, window_frames=3)


def test_tiny_session_stays_bounded_for_every_policy() -> None:
    from recon.models.vggt import build_vggt

    torch.manual_seed(0)
    model = build_vggt(model_config="tiny", causal=True, random_init=True)
    image = torch.rand(3, 28, 42)
    tokens_per_frame = 5 + 2 * 3
    budget = 4 * 3 * tokens_per_frame  # three frames per layer
    for name in ("window", "sinks", "infinitevggt"):
        session = model.new_session(policy=make_policy(name, budget), camera_policy=camera_window_policy(2))
        for i in range(12):
            out = session.step(image.roll(i, dims=-1))
            assert torch.isfinite(out["depth"]).all() and torch.isfinite(out["pose_enc"]).all()
        assert session.memory.num_tokens() <= budget, name
        assert session.camera_cache_lengths()[0] == [12, 12]  # frame 0 + 2 frames, 4 iterations each
        bytes_after_12 = session.nbytes()
        for i in range(12):
            session.step(image.roll(i, dims=0))
        assert session.nbytes() == bytes_after_12, name  # storage stops growing once the budget is reached


def test_per_layer_pruning_never_reads_a_tensor_back_to_the_host(monkeypatch) -> None:
    """`.item()`, `.tolist()`, `bool/int/float(tensor)` would each be a device sync per layer on a GPU."""
    policy = DiversityPruningPolicy(total_budget=2 * 12)
    memory = StreamingMemory(2, policy)
    original = DiversityPruningPolicy.after_append
    reads = []

    def guarded(self, layer, cache, frame_index):  # type: ignore[no-untyped-def]
        def boom(*_a, **_k):
            reads.append(layer)
            raise AssertionError("host read inside after_append")

        with monkeypatch.context() as m:
            for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
                m.setattr(torch.Tensor, name, boom)
            original(self, layer, cache, frame_index)

    monkeypatch.setattr(DiversityPruningPolicy, "after_append", guarded)
    stream(memory, 6, seed=2)
    assert not reads and bool((policy.last_scores > 0).all())  # it pruned, without reading anything back
    assert policy.host_reads == 6  # the budget vector, once per frame
