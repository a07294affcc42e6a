"""Runners for the VGGT-family model fixtures (vggt_tiny, streamvggt_tiny_batch, streamvggt_tiny_stream_*).

Each runner builds the model from the fixture's `config.json["model"]`, loads `weights.safetensors` strictly,
runs the stored inputs in the fixture's dtype (float64; float32 when RECON_GOLDEN_TOLERANCE selects the
float32 tolerance set) and compares every stored output (README_vggt_family.md, "How to use a fixture").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from recon.models.vggt import VGGT, config_from_fixture
from tests.golden.util import TOLERANCE_SET, compare_outputs, load_tensors, tolerances


def run_dtype(cfg: dict) -> torch.dtype:
    """float32 when the float32 tolerance set is selected, else the fixture's run dtype."""
    if TOLERANCE_SET.startswith("float32"):
        return torch.float32
    return getattr(torch, cfg.get("run", {}).get("dtype", "float64"))


def build_model(folder: Path, cfg: dict, dtype: torch.dtype) -> VGGT:
    """Model from the fixture config with its weights loaded strictly, in eval mode and `dtype`."""
    model = VGGT(config_from_fixture(cfg["model"]))
    model.load_state_dict(load_tensors(folder / "weights.safetensors"), strict=True)
    return model.to(dtype).eval()


def vggt_offline_outputs(model: VGGT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """`VGGT.forward(images)` outputs under the fixture's key names (vggt_tiny)."""
    with torch.inference_mode():
        out = model(images, keep_all_layers=True)
        agg = model.aggregator
        B, S, _, H, W = images.shape
        normed = ((images - agg._resnet_mean) / agg._resnet_std).reshape(B * S, 3, H, W)
        dino = agg.patch_embed
        n = (H // dino.patch_size) * (W // dino.patch_size)
        got: dict[str, torch.Tensor] = {
            "pose_enc": out["pose_enc"],
            "pose_enc_list": torch.stack(out["pose_enc_list"]),
            "depth": out["depth"], "depth_conf": out["depth_conf"],
            "world_points": out["world_points"], "world_points_conf": out["world_points_conf"],
            "patch_start_idx": torch.tensor(out["patch_start_idx"], dtype=torch.int64),
            "intermediate.dino_pos_embed_interp": dino.interpolate_pos_encoding(n, H, W, images.dtype),
            "intermediate.dino_patch_tokens": dino(normed),
        }
        got.update({f"aggregated_tokens.{i}": t for i, t in enumerate(out["aggregated_tokens"])})
    return got


def streamvggt_batch_outputs(model: VGGT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Block-causal single pass, per-frame results stacked frame-first as StreamVGGT.forward returns them."""
    with torch.inference_mode():
        out = model(images, keep_all_layers=True)
    got = {
        "pts3d_in_other_view": out["world_points"].transpose(0, 1),
        "conf": out["world_points_conf"].transpose(0, 1),
        "depth": out["depth"].transpose(0, 1),
        "depth_conf": out["depth_conf"].transpose(0, 1),
        "camera_pose": out["pose_enc"].transpose(0, 1),
        "pose_enc_list": torch.stack(out["pose_enc_list"]).permute(2, 0, 1, 3),
        "patch_start_idx": torch.tensor(out["patch_start_idx"], dtype=torch.int64),
    }
    got.update({f"aggregated_tokens.{i}": t for i, t in enumerate(out["aggregated_tokens"])})
    return got


def streamvggt_stream_outputs(model: VGGT, images: torch.Tensor, camera_cache: str) -> dict[str, torch.Tensor]:
    """Frame-by-frame session; `camera_cache_len` is [F, layers] (reference) or [F, layers, iters]."""
    session = model.new_session(camera_cache=camera_cache)
    frames: list[dict[str, Any]] = []
    cache_len = []
    for s in range(images.shape[1]):
        frames.append(session.step(images[:, s]))
        lengths = torch.tensor(session.camera_cache_lengths(), dtype=torch.int64)  # [iters, layers]
        cache_len.append(lengths[0] if camera_cache == "reference" else lengths.T)
    return {
        "pts3d_in_other_view": torch.stack([f["world_points"] for f in frames]),
        "conf": torch.stack([f["world_points_conf"] for f in frames]),
        "depth": torch.stack([f["depth"] for f in frames]),
        "depth_conf": torch.stack([f["depth_conf"] for f in frames]),
        "camera_pose": torch.stack([f["pose_enc"] for f in frames]),
        "pose_enc_list": torch.stack([torch.stack(f["pose_enc_list"]) for f in frames]),
        "camera_cache_len": torch.stack(cache_len),
    }


def _runner(produce):
    def run(folder: Path, cfg: dict) -> None:
        dtype = run_dtype(cfg)
        model = build_model(folder, cfg, dtype)
        images = load_tensors(folder / "inputs.safetensors")["images"].to(dtype)
        got = produce(model, images)
        want = load_tensors(folder / "outputs.safetensors")
        tol_name = "float32_reimplementation" if dtype == torch.float32 else None
        atol, rtol = tolerances(cfg, tol_name)
        compare_outputs(got, want, atol=atol, rtol=rtol, exact_keys=cfg["compare"].get("exact_keys", []))

    return run


PROCEDURES = {
    "vggt_offline": _runner(vggt_offline_outputs),
    "streamvggt_batch": _runner(streamvggt_batch_outputs),
    "streamvggt_stream_reference": _runner(lambda m, x: streamvggt_stream_outputs(m, x, "reference")),
    "streamvggt_stream_per_iteration_camera_cache": _runner(
        lambda m, x: streamvggt_stream_outputs(m, x, "per_iteration")),
}
