"""LingBot-Map model: the full-size architecture against the official manifests (meta device), strict loading, the
3D video RoPE against the reference's complex formula, and the fixture configuration reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recon.errors import CheckpointMismatchError, ConfigError
from recon.models.layers.rope_video import VideoRotaryEmbedding3D, video_positions
from recon.models.lingbot import LingBot, LingBotConfig, VideoRoPEConfig, config_from_fixture, tiny_config
from recon.models.registry import build_model, get_weights_cfg
from recon.models.weights import compare_keys, load_pretrained, model_shapes, read_manifest
from tests.conftest import require_golden


def _manifest(name: str) -> dict[str, tuple[int, ...]]:
    return read_manifest(require_golden(f"manifests/{name}"))


def _as_checkpoint(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize("name", ["lingbot-map-long", "lingbot-map"])
def test_full_size_model_equals_the_manifest(name: str) -> None:
    cfg = get_weights_cfg(name)
    manifest = _manifest(cfg.manifest)
    model = build_model(name, device="meta")
    assert all(p.is_meta for p in model.parameters())
    ours = model_shapes(model)
    report = compare_keys(ours, cfg.filter_fn(_as_checkpoint(manifest)))
    assert report.ok, report.describe()
    assert len(ours) == len(manifest)
    values = sum(int(line.split("\t")[3]) for line in
                 require_golden(f"manifests/{cfg.manifest}").read_text().splitlines()[1:])
    assert sum(p.numel() for p in model.parameters()) == values
    # VGGT-1B's layout minus track and point heads, plus the scale token.
    vggt = _manifest("vggt1b_keys.tsv")
    assert set(ours) - set(vggt) == {"aggregator.scale_token"}
    assert {k for k in vggt if not k.startswith(("track_head.", "point_head."))} == set(ours) - {
        "aggregator.scale_token"}


def test_point_head_adds_exactly_its_manifest() -> None:
    with torch.device("meta"):
        model = LingBot(LingBotConfig(enable_point=True))
    expected = {**_manifest("lingbot_map_keys.tsv"), **_manifest("lingbot_map_point_head_keys.tsv")}
    report = compare_keys(expected, model_shapes(model))
    assert report.ok, report.describe()


def test_stage1_entry_loads_the_layout_into_vggt_dropping_only_the_scale_token() -> None:
    cfg = get_weights_cfg("lingbot-map-stage1")
    manifest = _manifest(cfg.manifest)
    filtered = cfg.filter_fn(_as_checkpoint(manifest))
    assert set(manifest) - set(filtered) == {"aggregator.scale_token"}
    report = compare_keys(model_shapes(build_model(cfg, device="meta")), filtered)
    assert report.ok, report.describe()


@pytest.fixture(scope="module")
def tiny_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return LingBot(tiny_config()).state_dict()


def test_strict_loading_of_a_training_checkpoint(tmp_path: Path, tiny_weights: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "lingbot.pt"
    torch.save({"model": {f"module.{k}": v for k, v in tiny_weights.items()}, "epoch": 2}, path)
    model = load_pretrained("lingbot-map-tiny", path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_weights.items())


@pytest.mark.parametrize("edit", ["extra_point_head", "missing_scale_token"])
def test_strict_loading_names_what_the_reference_would_hide(tmp_path: Path, tiny_weights: dict[str, torch.Tensor],
                                                           edit: str) -> None:
    sd = dict(tiny_weights)
    if edit == "extra_point_head":
        sd["point_head.norm.weight"] = torch.ones(64)
        key = "point_head.norm.weight"
    else:
        del sd["aggregator.scale_token"]
        key = "aggregator.scale_token"
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError, match=key.replace(".", r"\.")):
        load_pretrained("lingbot-map-tiny", path)


def _reference_formula(x: torch.Tensor, pos: torch.Tensor, fhw: tuple[int, int, int], theta: float) -> torch.Tensor:
    """The reference's rotation written the way it computes it: complex128 tables from torch.polar, x viewed as
    complex pairs (x[2i], x[2i+1]), multiplied, viewed back (lingbot_map.md §3)."""
    tables = []
    for axis, d in enumerate(fhw):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64)[: d // 2] / d))
        angles = torch.outer(pos[:, axis].to(torch.float64), freqs)
        tables.append(torch.polar(torch.ones_like(angles), angles))
    freqs = torch.cat(tables, dim=1)[None, None]
    xc = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs).flatten(3).to(x.dtype)


@pytest.mark.parametrize("fhw", [(4, 6, 6), (20, 22, 22)])
def test_video_rope_equals_the_reference_formula(fhw: tuple[int, int, int]) -> None:
    gen = torch.Generator().manual_seed(3)
    pos = video_positions(5, 3, 2, 4, 6)
    x = torch.randn(2, 3, pos.shape[0], sum(fhw), generator=gen, dtype=torch.float64)
    rope = VideoRotaryEmbedding3D(fhw)
    torch.testing.assert_close(rope(x, pos[None].expand(2, -1, -1)), _reference_formula(x, pos, fhw, 1e4),
                               atol=1e-13, rtol=0)


def test_video_positions_layout() -> None:
    pos = video_positions(7, 2, 2, 3, 6)
    assert pos.shape == (2 * (6 + 6), 3)
    first = pos[:12]
    assert first[:, 0].tolist() == [7] * 12
    assert first[:6, 1:].tolist() == [[i, i] for i in range(6)]  # special token i at (f, i, i)
    assert first[6:, 1:].tolist() == [[6 + r, 6 + c] for r in range(2) for c in range(3)]
    assert pos[12:, 0].tolist() == [8] * 12


def test_video_rope_depends_only_on_relative_positions() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 1, 1, 1, 16, generator=gen, dtype=torch.float64)
    rope = VideoRotaryEmbedding3D((4, 6, 6))

    def score(pq: list[int], pk: list[int]) -> torch.Tensor:
        a = rope(q, torch.tensor([pq]))
        b = rope(k, torch.tensor([pk]))
        return (a * b).sum()

    base = score([3, 2, 5], [1, 4, 4])
    shifted = score([3 + 1000, 2 + 7, 5 + 9], [1 + 1000, 4 + 7, 4 + 9])
    assert abs(float(base - shifted)) < 1e-9
    assert abs(float(base - score([4, 2, 5], [1, 4, 4]))) > 1e-6  # and the temporal part does matter


def test_config_from_the_fixtures() -> None:
    for name in ("lingbot_tiny_stream", "lingbot_tiny_window"):
        cfg = json.loads((require_golden(name) / "config.json").read_text())
        m = cfg["model"]
        config = config_from_fixture(m)
        assert config.embed_dim == m["embed_dim"]
        assert config.aggregator.depth == m["aggregator"]["depth"]
        assert config.rope3d.fhw_dim == tuple(m["aggregator"]["rope3d"]["fhw_dim"])
        assert config.output_layers == tuple(m["aggregator"]["selected_idx"])
        assert config.camera_head.num_iterations == m["camera_head"]["num_iterations"]
        assert config.num_special_tokens == m["aggregator"]["num_special_tokens"]
        assert LingBot(config).patch_start_idx == m["aggregator"]["patch_start_idx"]


@pytest.mark.parametrize("option", [{"disable_global_rope": True}, {"enable_3d_rope": False},
                                    {"kv_cache_include_scale_frames": False}])
def test_unsupported_reference_modes_are_refused(option: dict) -> None:
    cfg = json.loads((require_golden("lingbot_tiny_stream") / "config.json").read_text())["model"]
    if "disable_global_rope" in option:
        cfg["aggregator"]["disable_global_rope"] = True
    else:
        cfg.update(option)
    with pytest.raises(ConfigError, match=next(iter(option))):
        config_from_fixture(cfg)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="fhw_dim"):
        LingBotConfig(rope3d=VideoRoPEConfig(fhw_dim=(20, 20, 20)))
    with pytest.raises(ConfigError, match="output_layers"):
        LingBotConfig(output_layers=(4, 11, 17, 24))


def test_weights_verify_command(tmp_path: Path, tiny_weights: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    from recon.cli import main

    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_weights.items()}, str(good))
    assert main(["weights", "verify", "lingbot-map-tiny", "--weights", str(good), "--full"]) == 0
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_weights.items() if k != "aggregator.scale_token"}, str(bad))
    assert main(["weights", "verify", "lingbot-map-tiny", "--weights", str(bad)]) != 0
