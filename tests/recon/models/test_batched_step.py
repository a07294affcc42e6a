"""The stream batch (recon.models.batched): N sessions stepped in one model call equal N unbatched steps.

Tolerance: both paths run the same float32 operations per element; only the batch size handed to the GEMMs
differs, which may change their blocking and so the float32 summation order. Each reordered sum of K terms moves
a value by at most ~K * 2^-24 relative; through the tiny model's ~40 chained matmul/norm layers (inner sizes
<= 128) that stays below 128 * 40 * 6e-8 ~ 3e-4 relative in the worst case and ~1e-6 in practice. We bound the
max difference by 1e-4 relative to each output's magnitude (and 1e-5 absolute): a wrong cache, a wrong session
mix-up or a missed first-frame token moves the pose by ~1e-2 (asserted below). Measured here: 5e-7 relative.
"""

from __future__ import annotations

import pytest
import torch

from recon.errors import BackendError
from recon.memory.policies import camera_window_policy, make_policy
from recon.models.batched import step_batch
from recon.models.vggt import VGGT, sane_random_init, tiny_config

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def model() -> VGGT:
    m = sane_random_init(VGGT(tiny_config(causal=True)), seed=1)
    with torch.no_grad():  # LayerScale 0.01 would hide attention differences: make them matter
        for name, p in m.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(0.7)
    return m.eval()


def _frames(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 28, 42, generator=g) for _ in range(n)]


def _session(model: VGGT, static: bool):
    # InfiniteVGGT: diversity pruning with a small budget (prunes from the third frame), bounded camera cache.
    return model.new_session(policy=make_policy("infinitevggt", total_budget=120), capacity=64 if static else 0,
                             camera_policy=camera_window_policy(2), static=static, track_token_ids=True)


def _assert_same(a: dict, b: dict) -> None:
    assert a["frame_index"] == b["frame_index"]
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        scale = float(b[key].abs().max())
        torch.testing.assert_close(a[key], b[key], rtol=RTOL, atol=ATOL * max(scale, 1.0), msg=key)
    for x, y in zip(a["pose_enc_list"], b["pose_enc_list"], strict=True):
        torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("static", [False, True])
def test_batched_equals_unbatched_for_sessions_of_different_lengths(model: VGGT, static: bool) -> None:
    history = [4, 1, 0]  # frames each session has seen before the batched ticks (0: its first frame is batched)
    streams = [_frames(h + 3, seed=10 + i) for i, h in enumerate(history)]
    alone = [_session(model, static) for _ in history]
    batched = [_session(model, static) for _ in history]
    for sessions in (alone, batched):
        for s, frames, h in zip(sessions, streams, history, strict=True):
            for f in frames[:h]:
                s.step(f)
    for tick in range(3):
        ref = [s.step(frames[h + tick]) for s, frames, h in zip(alone, streams, history, strict=True)]
        got = step_batch(batched, [frames[h + tick] for frames, h in zip(streams, history, strict=True)])
        for a, b in zip(got, ref, strict=True):
            _assert_same(a, b)
    # The caches hold the same entries (pruning decided the same way), per layer and per session.
    for a, b in zip(batched, alone, strict=True):
        assert a.num_frames == b.num_frames
        for ca, cb in zip(a.memory, b.memory, strict=True):
            assert len(ca) == len(cb)
            assert torch.equal(ca.token_ids(), cb.token_ids())
    assert len(batched[0].memory[0]) < batched[0].memory[0].appended_total  # pruning really ran


def test_batched_elements_really_differ(model: VGGT) -> None:
    """Guard against a batch that leaks one session's cache into another: the same frame, different histories."""
    a, b = _session(model, False), _session(model, False)
    for f in _frames(3, seed=1):
        a.step(f)
    frame = _frames(1, seed=2)[0]
    out_a, out_b = step_batch([a, b], [frame, frame])
    assert out_b["frame_index"] == 0 and out_a["frame_index"] == 3
    # A random model's depth hardly depends on the history; its pose does (measured 1e-2, 1000x the tolerance).
    assert float((out_a["pose_enc"] - out_b["pose_enc"]).abs().max()) > 100 * ATOL


def test_batched_refuses_mixed_sizes_and_repeated_sessions(model: VGGT) -> None:
    a, b = _session(model, False), _session(model, False)
    with pytest.raises(BackendError):
        step_batch([a, b], [torch.rand(3, 28, 42), torch.rand(3, 28, 56)])
    with pytest.raises(BackendError):
        step_batch([a, a], [torch.rand(3, 28, 42), torch.rand(3, 28, 42)])
    assert a.num_frames == 0 and b.num_frames == 0  # nothing stepped


# HorizonStream: chunks of several streams in one call (recon.models.horizonstream forward_chunk_batch).


@pytest.fixture(scope="module")
def horizon():
    from recon.models.horizonstream import HorizonStream, random_init
    from recon.models.horizonstream import tiny_config as hs_tiny

    return random_init(HorizonStream(hs_tiny()), seed=0).eval()


def _hs_frames(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 56, 90, generator=g)
    return [base[:, :, i:i + 70] for i in range(n)]


def test_horizonstream_batched_equals_unbatched_for_streams_of_different_lengths(horizon) -> None:
    from recon.models.horizonstream_session import HorizonStreamSession, push_batch

    # Frames pushed before the batched ticks: 6 and 4 (past the first window, at different chunk indices, so
    # different temporal RoPE starts), 0 and 0 (their first windows complete together in the last tick).
    history, ticks = [6, 4, 0, 0], 4
    streams = [_hs_frames(h + ticks, seed=20 + i) for i, h in enumerate(history)]
    alone = [HorizonStreamSession(horizon) for _ in history]
    batched = [HorizonStreamSession(horizon) for _ in history]
    for sessions in (alone, batched):
        for s, frames, h in zip(sessions, streams, history, strict=True):
            for f in frames[:h]:
                s.push(f)
    emitted = 0
    for tick in range(ticks):
        ref = [s.push(frames[h + tick]) for s, frames, h in zip(alone, streams, history, strict=True)]
        got = push_batch(batched, [frames[h + tick] for frames, h in zip(streams, history, strict=True)])
        for fa, fb in zip(got, ref, strict=True):
            assert [f.index for f in fa] == [f.index for f in fb]
            emitted += len(fa)
            for a, b in zip(fa, fb, strict=True):
                for name in ("T_cam_world", "fov", "depth", "conf"):
                    x, y = getattr(a, name), getattr(b, name)
                    torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL * max(float(y.abs().max()), 1.0),
                                               msg=name)
                assert a.metric_scale == pytest.approx(b.metric_scale, rel=RTOL)
    assert emitted == 4 + 4 + 4 + 4  # 1 per tick for the first two, a whole window at the end for the others
    assert [s.chunk_idx for s in batched] == [s.chunk_idx for s in alone] == [7, 5, 1, 1]
