"""Pinhole projection helpers (OpenCV axes, pixel centres at integer coordinates like VGGT: no +0.5)."""

from __future__ import annotations

from typing import Any

import numpy as np


def backproject_depth(depth_hw: Any, K_33: Any, dtype: type = np.float64) -> Any:
    """Camera-frame points [...,H,W,3] from depth [...,H,W] (z along the optical axis): the one depth unprojection.

    Pixel (u, v) is the integer column / row (no +0.5, the models' and the fixtures' convention). K is [3,3] or
    one per leading index [...,3,3]. A numpy depth is computed in float64 and rounded to `dtype` once; a torch
    depth (the LASER engine, VGGT's window model) stays a tensor, computed in its own dtype and device (the
    caller picks the precision; `dtype` is not used).
    """
    h, w = depth_hw.shape[-2:]
    if type(depth_hw).__module__.startswith("torch"):  # no torch import for numpy callers
        import torch

        v = torch.arange(h, dtype=depth_hw.dtype, device=depth_hw.device)[:, None]
        u = torch.arange(w, dtype=depth_hw.dtype, device=depth_hw.device)[None, :]
        z = depth_hw
    else:
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        z = depth_hw.astype(np.float64)
        K_33 = np.asarray(K_33)
    fx, fy = K_33[..., 0, 0, None, None], K_33[..., 1, 1, None, None]
    cx, cy = K_33[..., 0, 2, None, None], K_33[..., 1, 2, None, None]
    x = (u - cx) * z / fx
    y = (v - cy) * z / fy
    if not isinstance(z, np.ndarray):
        return torch.stack([x, y, z], dim=-1)
    points = np.stack([x, y, z], axis=-1)
    return points if dtype == np.float64 else points.astype(dtype)


def depth_to_world_points(depth_hw: np.ndarray, K_33: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """World points hxwx3 (float32) from depth, intrinsics and a camera-to-world pose (`T_world_cam`, recon's one
    pose convention; a camera-from-world model encoding is converted at the model boundary)."""
    pts_cam = backproject_depth(depth_hw, K_33)
    pts_world = pts_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    return pts_world.astype(np.float32)
