"""Runners for the LASER alignment fixtures (laser_sim3, laser_layers, laser_stream)."""

from __future__ import annotations

from pathlib import Path

import torch

from recon.align.sim3 import apply_sim3_to_poses, confidence_mask, register_adjacent_windows
from tests.golden.util import load_tensors


def run_sim3(folder: Path, cfg: dict) -> None:
    """Each case: masks exact, IRLS iteration count exact, scale/R/t/poses within the README's limits."""
    inputs = load_tensors(folder / "inputs.safetensors")
    outputs = load_tensors(folder / "outputs.safetensors")
    overlap, p = cfg["overlap"], cfg["top_conf_percentile"]
    for case in [c["name"] for c in cfg["cases"]]:
        x = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(case + ".")}
        want = {k.split(".", 1)[1]: v for k, v in outputs.items() if k.startswith(case + ".")}
        prev_mask, prev_thr = confidence_mask(x["prev_conf"], p)
        cur_mask, cur_thr = confidence_mask(x["cur_conf"], p)
        assert torch.equal(prev_thr, want["prev_conf_thr"]) and torch.equal(cur_thr, want["cur_conf_thr"]), case
        assert torch.equal(prev_mask, want["prev_mask"]) and torch.equal(cur_mask, want["cur_mask"]), case
        valid = prev_mask[-overlap:] & cur_mask[:overlap]
        assert torch.equal(valid, want["overlap_valid_mask"]), case
        reg = register_adjacent_windows(
            x["prev_local_points"][-overlap:], x["cur_local_points"][:overlap],
            x["prev_camera_poses"][-overlap:], x["cur_camera_poses"][:overlap], valid,
        )
        assert reg.irls.num_iters == int(want["irls_num_iters"]), case
        torch.testing.assert_close(reg.irls.iterates, want["irls_iterates"], rtol=1e-4, atol=0)
        torch.testing.assert_close(reg.scale, want["scale"], rtol=1e-4, atol=0)
        torch.testing.assert_close(reg.R, want["R"], rtol=0, atol=1e-5)
        torch.testing.assert_close(reg.t, want["t"], rtol=0, atol=1e-4)
        poses = apply_sim3_to_poses(x["cur_camera_poses"], reg.scale, reg.R, reg.t)
        torch.testing.assert_close(poses, want["registered_cur_camera_poses"], rtol=0, atol=1e-4)


FIXTURE_PREFIXES = {"laser_sim3": run_sim3}
