"""Pinhole projection helpers (OpenCV axes, pixel centres at integer coordinates like VGGT: no +0.5)."""

from __future__ import annotations

import numpy as np


def backproject_depth(depth_hw: np.ndarray, K_33: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Camera-frame points hxwx3 from a depth map (z along the optical axis): the one depth unprojection.

    Pixel (u, v) is the integer column / row (no +0.5, the models' and the fixtures' convention). The arithmetic
    runs in float64 and is rounded to `dtype` once.
    """
    h, w = depth_hw.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    z = depth_hw.astype(np.float64)
    x = (u - K_33[0, 2]) * z / K_33[0, 0]
    y = (v - K_33[1, 2]) * z / K_33[1, 1]
    points = np.stack([x, y, z], axis=-1)
    return points if dtype == np.float64 else points.astype(dtype)


def depth_to_world_points(depth_hw: np.ndarray, K_33: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """World points hxwx3 (float32) from depth, intrinsics and a camera-to-world pose (`T_world_cam`, recon's one
    pose convention; a camera-from-world model encoding is converted at the model boundary)."""
    pts_cam = backproject_depth(depth_hw, K_33)
    pts_world = pts_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    return pts_world.astype(np.float32)
