"""A deterministic backend for the ROS node tests, registered as `ros_fake` when imported (`--plugin`).

Poses are a known function of `seq`, so the test can check that what arrives on ~pose and /tf is exactly
what the backend produced; `lag=N` emits each result N frames late, so stamps must follow the result and
not the newest image. Points form a small plane whose first point is NaN (it must not be published).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.backends import BackendEntry, register
from recon.backends.configs import BackendConfig
from recon.config import option
from recon.geometry.transforms import make_se3, so3_exp
from recon.types import BackendStats, Frame, FrameResult

GRID_H, GRID_W = 4, 6


def pose_for(seq: int) -> np.ndarray:
    """The T_world_cam the fake backend reports for frame `seq`."""
    R = so3_exp(np.array([0.02 * seq, 0.05 * seq + 0.1, -0.03]))
    return make_se3(R, np.array([0.1 * seq, -0.02 * seq, 0.3]))


class FakeBackend:
    """Emits pose_for(seq), a 4x6 point plane at depth 2 and the frame's colours, `lag` frames late."""

    name = "ros_fake"

    def __init__(self, lag: int = 0) -> None:
        self.lag = int(lag)
        self._pending: list[Frame] = []
        self._stats = BackendStats()

    def reset(self) -> None:
        self._pending.clear()
        self._stats = BackendStats()

    def _result(self, frame: Frame) -> FrameResult:
        K = frame.K if frame.K is not None else np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
        sy, sx = GRID_H / frame.height, GRID_W / frame.width
        K_grid = K * np.array([[sx], [sy], [1.0]])
        v, u = np.mgrid[0:GRID_H, 0:GRID_W].astype(np.float64)
        pts_cam = np.stack([(u - K_grid[0, 2]) / K_grid[0, 0] * 2, (v - K_grid[1, 2]) / K_grid[1, 1] * 2,
                            np.full_like(u, 2.0)], axis=-1)
        T = pose_for(frame.seq)
        pts_world = (pts_cam @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
        pts_world[0, 0] = np.nan
        colours = frame.image[:: frame.height // GRID_H, :: frame.width // GRID_W][:GRID_H, :GRID_W]
        return FrameResult(frame.stream_id, frame.seq, frame.t_ns, T, K_grid, points_world=pts_world,
                           image=np.ascontiguousarray(colours))

    def step(self, frame: Frame) -> list[FrameResult]:
        self._stats.frames_in += 1
        self._pending.append(frame)
        out = [self._result(f) for f in self._pending[: max(0, len(self._pending) - self.lag)]]
        self._pending = self._pending[len(out):]
        self._stats.results_out += len(out)
        return out

    def flush(self) -> list[FrameResult]:
        out = [self._result(f) for f in self._pending]
        self._pending.clear()
        return out

    def stats(self) -> BackendStats:
        return self._stats


@dataclass
class FakeBackendConfig(BackendConfig):
    kind = "ros_fake backend"

    lag: int = option(0, "results emitted this many frames late")


def create(config: FakeBackendConfig) -> FakeBackend:
    return FakeBackend(lag=config.lag)


register(BackendEntry("ros_fake", f"{__name__}:create", (), -100, "deterministic test backend (ROS tests)",
                      FakeBackendConfig))
