"""Loop-closure figures of a trajectory that returns to its start, and the recorder of a backend's own poses.

The figures are `recon.eval.trajectory`'s (return error and vertical drift as fractions of the path length), in
one dict for the map layer's tests and `recon bench loop`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from recon.eval.trajectory import loop_return_error, trajectory_length, vertical_drift
from recon.types import BackendStats, Frame, FrameResult


def loop_figures(T_world_cam: np.ndarray) -> dict[str, float]:
    """{"path", "return_error", "vertical_drift"} of poses [N,4,4] in frame order (fractions of the path)."""
    T = np.asarray(T_world_cam, np.float64)
    return {"path": trajectory_length(T), "return_error": loop_return_error(T), "vertical_drift": vertical_drift(T)}


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
