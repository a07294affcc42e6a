"""HorizonStream pieces with the tiny random model: 3D RoPE, masks, the head-wise gate, chunk schedule, constant
memory, determinism and refusals (the golden fixture checks the numbers; these check the mechanics)."""

from __future__ import annotations

import pytest
import torch

from recon.errors import ConfigError
from recon.models.horizonstream import (
    HorizonStream,
    camera_trunk_mask,
    global_attention_mask,
    random_init,
    tiny_config,
)
from recon.models.horizonstream_session import HorizonStreamSession
from recon.models.layers.attention import Attention
from recon.models.layers.rope3d import RotaryPositionEmbedding3D, spatiotemporal_positions


@pytest.fixture(scope="module")
def model() -> HorizonStream:
    torch.manual_seed(0)
    return random_init(HorizonStream(tiny_config()), seed=0).eval()


def _frames(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 56, 90, generator=g)
    return torch.stack([base[:, :, i:i + 70] for i in range(n)])


def test_rope3d_rotates_each_axis_by_its_own_position_and_passes_odd_channels() -> None:
    rope = RotaryPositionEmbedding3D(100.0)
    x = torch.randn(1, 2, 1, 16)
    zero = rope(x, torch.zeros(1, 1, 3, dtype=torch.long))
    torch.testing.assert_close(zero, x)  # position 0 is the identity
    out = rope(x, torch.tensor([[[3, 0, 0]]]))
    # D=16 splits 5/5/6: only the first 4 channels (t part) move; channel 4 (odd leftover) passes through.
    torch.testing.assert_close(out[..., 4:], x[..., 4:])
    assert not torch.allclose(out[..., :4], x[..., :4])
    # Relative: <rope(q, a), rope(k, b)> depends on a - b only, per axis.
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    dot = lambda a, b: float((rope(q, torch.tensor([[a]])) * rope(k, torch.tensor([[b]]))).sum())  # noqa: E731
    assert dot([5, 2, 7], [3, 1, 4]) == pytest.approx(dot([4, 3, 9], [2, 2, 6]), abs=1e-5)
    assert dot([5, 2, 7], [3, 1, 4]) != pytest.approx(dot([5, 2, 7], [3, 1, 5]), abs=1e-3)


def test_spatiotemporal_positions_layout() -> None:
    pos = spatiotemporal_positions(2, 2, 3, t_start=4, num_special=1)
    assert pos.shape == (2, 7, 3)
    assert pos[:, 0].abs().sum() == 0
    assert pos[1, 1].tolist() == [6, 1, 1] and pos[0, 6].tolist() == [5, 2, 3]


def test_first_chunk_global_mask_rules() -> None:
    P, X, F = 2, 1, 2
    m = global_attention_mask(F, P, X)
    A = P + F * X
    assert m.shape == (F * A, F * A)
    # Frame 0: active offsets < P + X = 3; offset 3 (slot 1) is inactive and sees only itself.
    assert m[0, :3].all() and not m[0, 3:].any()
    assert m[3].nonzero().flatten().tolist() == [3]
    # Frame 1: sees frame 0's patches (0, 1) and its own offsets < P + 2X = 4.
    row = A + 2  # frame 1, offset 2 (slot 0 pose token)
    assert m[row].nonzero().flatten().tolist() == [0, 1, A, A + 1, A + 2, A + 3]


def test_camera_trunk_mask_rules() -> None:
    m = camera_trunk_mask(3, 3)[:, 0]
    assert m[0].tolist() == [[True, False, False], [True, False, False], [True, False, False]]
    assert m[1].tolist() == [[True, True, False], [True, True, False], [True, False, False]]
    assert m[2].all()


def test_headwise_gate_starts_at_sigmoid_2_and_scales_each_head() -> None:
    torch.manual_seed(0)
    plain = Attention(8, 2)
    gated = Attention(8, 2, gate_attn="headwise")
    gated.load_state_dict({**plain.state_dict(), **{f"gate_proj.{k}": v for k, v in
                                                    gated.gate_proj.state_dict().items()}})
    x = torch.randn(1, 5, 8)
    v = plain.qkv(x)[..., 16:].reshape(1, 5, 2, 4).transpose(1, 2)
    q, k, _ = plain.project_qkv(x)
    att = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
    expected = plain.proj((att * torch.sigmoid(torch.tensor(2.0))).transpose(1, 2).reshape(1, 5, 8))
    torch.testing.assert_close(gated(x), expected)
    with pytest.raises(ValueError, match="gate_attn"):
        Attention(8, 2, gate_attn="elementwise")


def test_first_chunk_must_be_a_full_window(model: HorizonStream) -> None:
    with pytest.raises(ConfigError, match="first chunk"):
        model.forward_chunk(_frames(3), model.new_state())


def test_session_schedule_and_live_emission(model: HorizonStream) -> None:
    s = HorizonStreamSession(model, sliding_size=2)
    groups = []
    for frame in _frames(9):
        out = s.push(frame)
        if out:
            groups.append([f.index for f in out])
    groups.append([f.index for f in s.flush()])
    # Window 4, then chunks of 2, the last one shorter; each frame leaves with its chunk.
    assert groups == [[0, 1, 2, 3], [4, 5], [6, 7], [8]]


def test_session_memory_is_constant_after_the_first_chunk(model: HorizonStream) -> None:
    s = HorizonStreamSession(model, sliding_size=1)
    sizes = []
    for frame in _frames(16):
        s.push(frame)
        sizes.append(s.nbytes())
    win = model.config.window_size
    assert len(set(sizes[win:])) == 1, sizes
    assert len(s.motion.state.relative) == 1 and len(s.motion.state.online) == win - 1


def test_session_is_deterministic_and_seeded(model: HorizonStream) -> None:
    def run(seed: int) -> torch.Tensor:
        s = HorizonStreamSession(model, sliding_size=1, seed=seed)
        out = []
        for frame in _frames(7):
            out += s.push(frame)
        return torch.stack([f.T_cam_world for f in out])

    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert run(3).shape == (7, 3, 4)


def test_short_stream_is_padded_and_reset_after_flush(model: HorizonStream) -> None:
    s = HorizonStreamSession(model)
    assert s.push(_frames(1)[0]) == []
    out = s.push(_frames(2)[1]) + s.flush()
    assert [f.index for f in out] == [0, 1]
    assert all(f.depth.shape == (56, 70) and bool((f.depth > 0).all()) for f in out)
    assert s.chunk_idx == 0 and not s.motion.state.online  # a new stream starts clean
    assert [f.index for f in s.flush()] == []


def test_bench_long_stream_smoke(capsys) -> None:
    from recon.cli import main

    assert main(["bench", "horizonstream", "--frames", "12", "--block", "4", "--skip-full"]) == 0
    out = capsys.readouterr().out
    assert "late/early per-frame time" in out and "session bytes 1.000" in out
