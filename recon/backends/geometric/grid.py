"""Output grids of the geometric backend: strided resolution, intrinsics and point maps that match it.

Results may be emitted at a reduced resolution (every `stride`-th pixel) to bound the points a viewer or a
PLY writer receives. With pixel centres at integer coordinates (recon.geometry.camera), pixel (j, i) of the
strided grid is pixel (stride*j, stride*i) of the input, so its intrinsics are `fx/stride, cx/stride`.
"""

from __future__ import annotations

import math

import numpy as np

from recon.geometry.camera import depth_to_world_points


def default_intrinsics(width: int, height: int) -> np.ndarray:
    """Pinhole guess for unknown intrinsics: fx = fy = 0.8 * max(w, h), principal point at the centre.

    0.8 * max(w, h) is a horizontal field of view of about 64 degrees, typical of webcams and phones; a
    wrong focal length bends the monocular trajectory, so pass `K=` when it is known.
    """
    f = 0.8 * max(width, height)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def choose_stride(width: int, height: int, stride: int | None, max_points: int | None) -> int:
    """Explicit `stride` wins; otherwise the smallest stride giving at most `max_points` points per frame."""
    if stride is not None:
        return max(1, int(stride))
    if not max_points:
        return 1
    return max(1, math.ceil(math.sqrt(width * height / max_points)))


def strided_K(K_33: np.ndarray, stride: int) -> np.ndarray:
    """Intrinsics of the grid keeping every `stride`-th pixel (rows and columns)."""
    K = np.asarray(K_33, dtype=np.float64).copy()
    K[:2, :] /= stride
    K[2, 2] = 1.0
    return K


def depth_point_map(depth_hw: np.ndarray, K_33: np.ndarray, T_world_cam: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """World points hxwx3 (NaN where depth <= 0) and a 0/1 confidence from a depth map on its own grid."""
    valid = np.isfinite(depth_hw) & (depth_hw > 0)
    pts = depth_to_world_points(np.where(valid, depth_hw, 0.0), K_33, T_world_cam)
    pts[~valid] = np.nan
    return pts, valid.astype(np.float32)
