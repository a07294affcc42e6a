"""The per-frame streaming step prepared for the GPU: no host synchronisation inside a step, RoPE applied once when
a key is written, and static shapes (`StaticKVCache`) that keep InfiniteVGGT's decisions.

Host reads are counted with a TorchFunctionMode that sees every `.item()`, `.tolist()`, `.cpu()`, `.numpy()`,
`bool()/int()/float()` of a tensor, `nonzero`, `equal`, `allclose`, `masked_select` and `unique` the step makes:
each of those waits for the GPU. On the CPU nothing waits, but the same calls would, so they are what is counted.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from recon.errors import ConfigError
from recon.memory.kv_cache import StaticKVCache
from recon.memory.policies import AttentionSinkPolicy, DiversityPruningPolicy, camera_window_policy
from recon.models.horizonstream import HorizonStream, random_init, tiny_config
from recon.models.layers.rope import RotaryPositionEmbedding2D
from recon.models.vggt import build_vggt

HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero", "equal",
              "allclose", "masked_select", "unique"}


class HostReads(TorchFunctionMode):
    """Counts tensor operations that read a value back to the host (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def model():
    return build_vggt(model_config="tiny", causal=True, random_init=True).eval()


def _frames(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 56, 70 + 2 * n, generator=g)
    return [base[:, :, 2 * i:2 * i + 70].contiguous() for i in range(n)]


def _session(model, static: bool, budget: int = 200, capacity: int = 90):
    return model.new_session(policy=DiversityPruningPolicy(budget), capacity=capacity, track_token_ids=True,
                             camera_policy=camera_window_policy(2), static=static)


def test_static_caches_keep_the_dynamic_decisions(model) -> None:
    """Same kept token ids in every aggregator and camera cache after every frame, pruning active from frame 3
    on; outputs equal to float32 rounding (the masked kernel sums the same terms, the masked ones exactly 0, in
    another order: ~1e-7 relative, 1e-5 leaves room for that through the layers)."""
    dyn, sta = _session(model, False), _session(model, True)
    pruned = False
    for f, image in enumerate(_frames(7)):
        a, b = dyn.step(image), sta.step(image)
        torch.testing.assert_close(b["depth"], a["depth"], rtol=1e-5, atol=1e-5 * float(a["depth"].abs().max()))
        torch.testing.assert_close(b["pose_enc"], a["pose_enc"], rtol=1e-5, atol=1e-5)
        for ca, cb in zip(dyn.memory, sta.memory, strict=True):
            n = len(cb)
            assert n == len(ca) and n < cb.capacity, (f, cb.layer)
            assert torch.equal(cb.token_ids()[..., :n], ca.token_ids()), (f, cb.layer)
        for ca, cb in zip(dyn.camera_memory, sta.camera_memory, strict=True):  # frame 0 + the 2-frame window
            n = len(cb)
            assert n == len(ca) and n < cb.capacity, (f, cb.layer)
            torch.testing.assert_close(cb.keys()[:, :, :n], ca.keys(), rtol=1e-5, atol=1e-5)
        pruned |= any(c.appended_total > len(c) for c in dyn.memory)
    assert pruned, "the budget never made a layer prune: the comparison is vacuous"


def _attention_shapes(session, image) -> list[tuple]:
    shapes: list[tuple] = []

    class Shapes(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") == "scaled_dot_product_attention":
                shapes.append(tuple(tuple(a.shape) for a in args[:3]))
            return func(*args, **(kwargs or {}))

    with Shapes():
        session.step(image)
    return shapes


def test_static_step_has_the_same_shapes_every_frame(model) -> None:
    dyn, sta = _session(model, False), _session(model, True)
    frames = _frames(4)
    static_shapes = [_attention_shapes(sta, im) for im in frames]
    dynamic_shapes = [_attention_shapes(dyn, im) for im in frames]
    assert all(s == static_shapes[1] for s in static_shapes[1:])
    assert len({tuple(s) for s in dynamic_shapes[1:]}) > 1  # the dynamic cache's length moves (what static fixes)


def test_no_host_synchronisation_inside_a_step(model) -> None:
    """Static InfiniteVGGT: none. Dynamic InfiniteVGGT: exactly the policy's one budget read per frame
    (prefetched asynchronously on CUDA). Unbounded StreamVGGT and a HorizonStream chunk: none."""
    sta, dyn = _session(model, True), _session(model, False)
    plain = model.new_session()
    for image in _frames(4):
        for session, allowed in ((sta, 0), (plain, 0)):
            with HostReads() as reads:
                session.step(image)
            assert len(reads.calls) == allowed, reads.calls
        before = dyn.memory.policy.host_reads
        with HostReads() as reads:
            dyn.step(image)
        assert reads.calls == ["tolist"] and dyn.memory.policy.host_reads == before + 1
    hs = random_init(HorizonStream(tiny_config())).eval()
    images, state = _frames(6), hs.new_state()
    with torch.no_grad():
        for a, b in ((0, 4), (4, 5), (5, 6)):
            with HostReads() as reads:
                _, state = hs.forward_chunk(torch.stack(images[a:b]), state)
            assert not reads.calls, reads.calls


def test_rope_rotates_each_key_once_when_it_is_written(model, monkeypatch) -> None:
    """However long the cache, RoPE only ever sees the new frame's tokens: cached keys are stored rotated."""
    seen: list[int] = []
    original = RotaryPositionEmbedding2D.forward

    def recording(self, tokens, positions, max_position=None):
        seen.append(tokens.shape[-2])
        return original(self, tokens, positions, max_position)

    monkeypatch.setattr(RotaryPositionEmbedding2D, "forward", recording)
    session = model.new_session()
    frames = _frames(6)
    for image in frames:
        session.step(image)
    per_frame = model.aggregator.patch_start_idx + (56 // 14) * (70 // 14)
    assert max(seen) == per_frame and len(session.memory[0]) == len(frames) * per_frame


def test_static_shapes_need_bounded_memories(model) -> None:
    with pytest.raises(ConfigError, match="unbounded"):
        model.new_session(static=True, camera_policy=camera_window_policy(2))
    with pytest.raises(ConfigError, match="camera-head cache"):
        model.new_session(policy=DiversityPruningPolicy(200), capacity=90, static=True)
    with pytest.raises(ConfigError, match="capacity"):
        model.new_session(policy=DiversityPruningPolicy(200), static=True, camera_policy=camera_window_policy(2))


def test_budget_above_the_fixed_capacity_is_clamped_and_counted(model) -> None:
    session = model.new_session(policy=DiversityPruningPolicy(2000), capacity=60, static=True,
                                camera_policy=AttentionSinkPolicy(window_frames=1))
    for image in _frames(4):
        session.step(image)
    assert all(isinstance(c, StaticKVCache) and len(c) <= 60 for c in session.memory)
    assert int(session.memory.policy.budget_clamped) > 0


def test_compiled_static_step_is_one_graph_and_changes_nothing(model) -> None:
    """torch.compile of the static step (dynamo with the eager backend: the graph capture without code
    generation) traces every frame after the first into one graph, without a graph break (fullgraph), and gives
    the uncompiled step's outputs exactly."""
    import torch._dynamo

    torch._dynamo.reset()
    plain = _session(model, True)
    compiled = model.new_session(policy=DiversityPruningPolicy(200), capacity=90, track_token_ids=True,
                                 camera_policy=camera_window_policy(2), static=True,
                                 compile={"backend": "eager", "fullgraph": True})
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for image in _frames(4):
        a, b = plain.step(image), compiled.step(image)
        assert torch.equal(a["depth"], b["depth"]) and torch.equal(a["pose_enc"], b["pose_enc"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 1
    with pytest.raises(ConfigError, match="compile needs static"):
        model.new_session(compile=True)


def test_compile_flag_reaches_the_infinitevggt_backend() -> None:
    import argparse

    from recon.backends import create_backend
    from recon.backends.flags import add_backend_arguments, backend_options

    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    args = parser.parse_args(["--backend", "infinitevggt", "--compile", "--model-config", "tiny", "--budget", "400",
                              "--device", "cpu"])
    opts = backend_options(args, "infinitevggt")
    assert opts["compile"] is True
    backend = create_backend("infinitevggt", **{**opts, "compile": {"backend": "eager"}})
    assert backend.session.static and isinstance(backend.session.memory[0], StaticKVCache)
    with pytest.raises(ConfigError, match="--compile does not apply"):
        backend_options(parser.parse_args(["--compile"]), "horizonstream")


def test_storage_holds_the_anchors_when_the_capacity_is_smaller(model) -> None:
    """A per-layer capacity below the first frame's token count still holds the anchors (never evicted) plus the
    next frame's append: the bound is max(capacity, anchors)."""
    session = model.new_session(policy=DiversityPruningPolicy(60), capacity=19, static=True,
                                camera_policy=camera_window_policy(1))
    per_frame = model.aggregator.patch_start_idx + (56 // 14) * (70 // 14)
    for image in _frames(3):
        session.step(image)
    assert all(len(c) == per_frame and c.capacity == 2 * per_frame for c in session.memory)
