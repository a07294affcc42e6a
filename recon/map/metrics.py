"""Loop-closure figures of a trajectory that returns to its start (no ground truth needed).

`return_error`: distance between the first and last camera centre over the path length (a closed path ends
where it started). `vertical_drift`: the largest height change of the camera centre along the mean camera "up"
direction (minus the image y axis, averaged over the path) over the path length, for walks at constant height.
"""

from __future__ import annotations

import numpy as np


def path_length(T_world_cam: np.ndarray) -> float:
    c = T_world_cam[:, :3, 3]
    return float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum()) if len(c) > 1 else 0.0


def loop_figures(T_world_cam: np.ndarray) -> dict[str, float]:
    """{"path", "return_error", "vertical_drift"}; the last two as fractions of the path length."""
    T = np.asarray(T_world_cam, np.float64)
    length = path_length(T)
    if length <= 0:
        return {"path": 0.0, "return_error": float("nan"), "vertical_drift": float("nan")}
    c = T[:, :3, 3]
    up = -T[:, :3, 1].mean(axis=0)  # camera y points down in the image (OpenCV axes)
    up /= max(np.linalg.norm(up), 1e-12)
    h = (c - c[0]) @ up
    return {"path": length, "return_error": float(np.linalg.norm(c[-1] - c[0]) / length),
            "vertical_drift": float((h.max() - h.min()) / length)}
