"""Pinhole projection helpers (OpenCV axes, pixel centres at integer coordinates like VGGT: no +0.5)."""

from __future__ import annotations

import numpy as np


def backproject_depth(depth_hw: np.ndarray, K_33: np.ndarray) -> np.ndarray:
    """Camera-frame points hxwx3 from a depth map (z along the optical axis)."""
    h, w = depth_hw.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    z = depth_hw.astype(np.float64)
    x = (u - K_33[0, 2]) * z / K_33[0, 0]
    y = (v - K_33[1, 2]) * z / K_33[1, 1]
    return np.stack([x, y, z], axis=-1)


def depth_to_world_points(depth_hw: np.ndarray, K_33: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """World points hxwx3 (float32) from depth, intrinsics and a camera-to-world pose."""
    pts_cam = backproject_depth(depth_hw, K_33)
    pts_world = pts_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
    return pts_world.astype(np.float32)


def project_points(pts_cam_n3: np.ndarray, K_33: np.ndarray) -> np.ndarray:
    """Pixel coordinates nx2 of camera-frame points (z > 0 assumed)."""
    z = pts_cam_n3[:, 2:3]
    uv = pts_cam_n3[:, :2] / z
    return uv * np.array([K_33[0, 0], K_33[1, 1]]) + np.array([K_33[0, 2], K_33[1, 2]])
