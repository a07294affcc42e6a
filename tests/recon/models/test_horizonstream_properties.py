"""HorizonStream properties that must hold for every configuration the reference accepts, not just the fixtures'.

Drawn over tap lists (repeated layers, the last layer anywhere in the list, an aggregator list wider than the
DPT's), KDA layer sets, windows, sliding sizes (later chunks with F == Win included), RoPE periods (0 included),
register / metric tokens on and off. horizonstream_tiny_v2 showed why: a depth rule that held in one configuration
(raw log-depth never above 6.9) was wrong in another. These tests pin the structure, the golden fixtures the
numbers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon.errors import ConfigError
from recon.models.horizonstream import HorizonStream, HorizonStreamConfig, random_init
from recon.models.layers.camera_head import CameraHeadConfig
from recon.models.layers.dinov2 import DinoConfig
from recon.models.layers.dpt_head import DPTConfig

H, W = 28, 42  # a 2 x 3 patch grid keeps every draw under a second


@dataclass(frozen=True)
class Case:
    config: HorizonStreamConfig
    sliding: int
    frames: int


@st.composite
def cases(draw) -> Case:
    depth = draw(st.integers(2, 3))
    taps = draw(st.lists(st.integers(0, depth - 1), min_size=4, max_size=4))
    taps[draw(st.integers(0, 3))] = depth - 1  # the reference needs the last layer among the outputs
    extra = draw(st.lists(st.integers(0, depth - 1), max_size=1))
    # Sometimes an aggregator list wider than the DPT's, its extra layer first or last (then it is the pose layer).
    agg = tuple(draw(st.permutations([extra + taps, taps + extra]))[0]) if extra and draw(st.booleans()) else None
    win = draw(st.integers(2, 3))
    cfg = HorizonStreamConfig(
        img_size=56, embed_dim=24, depth=depth, num_heads=2, num_pose_tokens=draw(st.integers(1, 3)),
        window_size=win, rope_temporal_period=draw(st.sampled_from([0, 2, 5])),
        gla_layers=tuple(draw(st.sets(st.integers(0, depth - 1)))),
        num_register_tokens=2, use_register_token=draw(st.booleans()), metric_readout=draw(st.booleans()),
        aggregator_layer_idx=agg, patch_embed=DinoConfig(depth=1, num_heads=2, num_register_tokens=1),
        camera_head=CameraHeadConfig(trunk_depth=1, num_heads=2, num_iterations=2),
        depth_head=DPTConfig(features=8, out_channels=(4, 8, 8, 8), intermediate_layer_idx=tuple(taps),
                             frames_chunk_size=1),
        metric_hidden=(8,))
    sliding = draw(st.integers(1, win + 1))
    return Case(cfg, sliding, win + draw(st.integers(1, 2)) * sliding + draw(st.integers(0, 1)))


def _model(cfg: HorizonStreamConfig, seed: int = 0) -> HorizonStream:
    """Random weights whose first chunk has its median raw log-depth at 6.9, the value a clamp was once applied
    at, so values on both sides of it occur."""
    torch.manual_seed(seed)
    model = random_init(HorizonStream(cfg), seed=seed).eval()
    out = model.dpt_decoder.scratch.output_conv2[-1]
    with torch.no_grad():
        out.weight[0] *= 100.0  # undo random_init's damping of the depth logit
        res, _ = model.forward_chunk(_frames(cfg.window_size), model.new_state())
        scale = res.get("predicted_metric_scale", torch.ones(1))
        out.bias[0] += 6.9 - float(torch.log(res["depth"] / scale).median())
    return model


def _frames(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, H, W + 2 * n, generator=g)
    return torch.stack([base[:, :, 2 * i:2 * i + W] for i in range(n)])


def _schedule(case: Case) -> list[tuple[int, int]]:
    win = case.config.window_size
    bounds = [(0, win)]
    while bounds[-1][1] < case.frames:
        a = bounds[-1][1]
        bounds.append((a, min(a + case.sliding, case.frames)))
    return bounds


def _stream(model: HorizonStream, case: Case, images: torch.Tensor) -> list[tuple[dict, dict, object]]:
    """(outputs, intermediates, state handed on) of every chunk of the schedule."""
    state, out = model.new_state(), []
    for a, b in _schedule(case):
        inter: dict = {}
        with torch.no_grad():
            res, state = model.forward_chunk(images[a:b], state, intermediates=inter)
        out.append((res, inter, state))
    return out


SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cases())
def test_each_chunk_depth_is_the_dpt_head_on_its_own_tokens_unclamped(case: Case) -> None:
    """depth = exp(DPT(this chunk's aggregated tokens)) * scale, frame by frame, for every chunk; and the raw values
    really cross 6.9, so a clamp anywhere would show."""
    model = _model(case.config)
    images = _frames(case.frames)
    crossed = False
    for c, (res, inter, _) in enumerate(_stream(model, case, images)):
        layers = [inter.get(f"agg_layer{i}") for i in range(case.config.depth)]
        assert all(layers[i] is not None for i in case.config.output_layers)
        F = res["depth"].shape[1]
        for f in range(F):  # each frame on its own: the head never mixes frames or chunks
            own = [t[:, f:f + 1] if t is not None else None for t in layers]
            with torch.no_grad():
                raw, conf_raw = model.dpt_decoder(own, (H, W), patch_start_idx=model.agg_regator.num_special_tokens)
            scale = res.get("predicted_metric_scale", torch.ones(1))
            torch.testing.assert_close(res["depth"][:, f:f + 1], torch.exp(raw) * scale, rtol=1e-6, atol=0,
                                       msg=f"chunk {c} frame {f}")
            torch.testing.assert_close(res["depth_conf"][:, f:f + 1], 1 + torch.exp(conf_raw), rtol=1e-6, atol=0)
            crossed |= bool((raw > 6.9).any()) and bool((raw < 6.9).any())
        assert ("predicted_metric_scale" in res) == case.config.metric_readout
        assert res["chunk_cam_map"].shape == (F, case.config.window_size, 9)
    assert crossed, "the draw never crossed 6.9: the clamp check is vacuous"


@SETTINGS
@given(cases())
def test_depth_bias_shift_scales_depth_exactly(case: Case) -> None:
    """Adding d to the depth logit's bias multiplies every depth by exp(d) and leaves confidence alone: no clamp,
    no saturation, in any chunk."""
    model = _model(case.config)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.dpt_decoder.scratch.output_conv2[-1].bias[0] += 3.0
    images = _frames(case.frames)
    for (a, _, _), (b, _, _) in zip(_stream(model, case, images), _stream(shifted, case, images), strict=True):
        torch.testing.assert_close(b["depth"], a["depth"] * torch.exp(torch.tensor(3.0)), rtol=1e-5, atol=0)
        torch.testing.assert_close(b["depth_conf"], a["depth_conf"], rtol=0, atol=0)


@SETTINGS
@given(cases())
def test_pose_tokens_come_from_the_last_listed_layer(case: Case) -> None:
    """Layers after the pose layer (the aggregator list's last entry) cannot move rotations or fields of view in
    any chunk: perturbing them changes depth but not `chunk_cam_map[..., 3:]`."""
    cfg = case.config
    pose_layer = cfg.output_layers[-1]
    model = _model(cfg)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for layer in range(pose_layer + 1, cfg.depth):
            for blk in (other.agg_regator.frame_blocks[layer], other.agg_regator.global_blocks[layer]):
                blk.mlp.fc2.bias.add_(0.5)
    images = _frames(case.frames)
    moved = False
    for (a, _, _), (b, _, _) in zip(_stream(model, case, images), _stream(other, case, images), strict=True):
        torch.testing.assert_close(b["chunk_cam_map"][..., 3:], a["chunk_cam_map"][..., 3:], rtol=0, atol=0)
        moved |= not torch.equal(a["depth"], b["depth"])
    assert moved == (pose_layer < cfg.depth - 1)


@SETTINGS
@given(cases())
def test_later_chunks_read_the_carried_state_and_it_stays_constant(case: Case) -> None:
    """Whether a chunk is the first is its index, not its size: a later chunk of Win frames still reads the carried
    K/V (changing it changes the output), and the carried state has one size after every chunk."""
    model = _model(case.config)
    images = _frames(case.frames)
    chunks = _stream(model, case, images)
    assert len({state.nbytes() for _, _, state in chunks}) == 1
    a, b = _schedule(case)[1]
    state = copy.deepcopy(chunks[0][2])
    state.global_kv[0] = state.global_kv[0] + 1.0
    with torch.no_grad():
        base, _ = model.forward_chunk(images[a:b], chunks[0][2])
        poked, _ = model.forward_chunk(images[a:b], state)
    assert not torch.equal(base["depth"], poked["depth"])
    assert "pose_enc" not in base  # only the first chunk has it


def test_rope_period_zero_keeps_every_chunk_at_the_same_start() -> None:
    """Period 0: the temporal offset is 0 for every chunk, so two later chunks with the same frames and the same
    carried state give the same output whatever their index."""
    cfg = HorizonStreamConfig(
        img_size=56, embed_dim=24, depth=2, num_heads=2, num_pose_tokens=2, window_size=2, rope_temporal_period=0,
        gla_layers=(), patch_embed=DinoConfig(depth=1, num_heads=2, num_register_tokens=1),
        camera_head=CameraHeadConfig(trunk_depth=1, num_heads=2, num_iterations=2),
        depth_head=DPTConfig(features=8, out_channels=(4, 8, 8, 8), intermediate_layer_idx=(0, 1, 1, 1)),
        metric_hidden=(8,))
    model = _model(cfg)
    images = _frames(3)
    with torch.no_grad():
        _, state = model.forward_chunk(images[:2], model.new_state())
        one, _ = model.forward_chunk(images[2:], state)
        state.chunk_idx = 5
        five, _ = model.forward_chunk(images[2:], state)
    torch.testing.assert_close(one["depth"], five["depth"], rtol=0, atol=0)


@pytest.mark.parametrize("taps,agg,match", [
    ((0, 0, 0, 0), None, "must include the last layer"),
    ((0, 1, 1, 1), (1,), "are not aggregator layers"),
    ((0, 1, 1), None, "exactly four taps"),
])
def test_configurations_the_reference_refuses_are_refused(taps, agg, match) -> None:
    with pytest.raises(ConfigError, match=match):
        HorizonStreamConfig(depth=2, gla_layers=(), depth_head=DPTConfig(intermediate_layer_idx=taps),
                            aggregator_layer_idx=agg)
