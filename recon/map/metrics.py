"""Loop-closure figures of a trajectory that returns to its start (no ground truth needed).

`return_error`: distance between the first and last camera centre over the path length (a closed path ends
where it started). `vertical_drift`: the largest height change of the camera centre along the mean camera "up"
direction (minus the image y axis, averaged over the path) over the path length, for walks at constant height.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from recon.types import BackendStats, Frame, FrameResult


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


class OdometryRecorder:
    """Passes a backend through and keeps what it emitted (seq -> pose) and its time: the odometry before the map
    layer, measured in the same run as the corrected output (`MappedBackend(OdometryRecorder(inner))`)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, inner.name
        self.poses: dict[int, np.ndarray] = {}
        self.seconds = 0.0

    def _keep(self, results: list[FrameResult]) -> list[FrameResult]:
        self.poses.update({r.seq: r.T_world_cam for r in results if r.tracked})
        return results

    def reset(self) -> None:
        self.inner.reset()
        self.poses.clear()

    def step(self, frame: Frame) -> list[FrameResult]:
        t0 = time.perf_counter()
        out = self.inner.step(frame)
        self.seconds += time.perf_counter() - t0
        return self._keep(out)

    def flush(self) -> list[FrameResult]:
        t0 = time.perf_counter()
        out = self.inner.flush()
        self.seconds += time.perf_counter() - t0
        return self._keep(out)

    def stats(self) -> BackendStats:
        return self.inner.stats()
