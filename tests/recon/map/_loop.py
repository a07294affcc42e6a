"""A small closed loop rendered from the synthetic room, and a wrapper adding known drift to any backend.

The loop walks a circle around the room's centre looking outwards at the furnished walls and returns to its
first pose, then continues a few steps so the start is seen again from the same viewpoints. The trackers are
nearly exact on clean renders, so `DriftingBackend` bends their output the way real odometry drifts (a slow yaw
and a vertical creep, plus a scale drift for up-to-scale backends): the map layer must then undo it.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from recon.datasets.synthetic import Renderer, build_scene, default_intrinsics, look_at
from recon.geometry import Sim3, so3_exp
from recon.types import Frame, FrameResult


def loop_poses(n_loop: int = 72, extra: int = 8, radius: float = 1.3) -> np.ndarray:
    """Camera-to-world poses: `n_loop` steps once around the circle, then `extra` steps of the start again."""
    poses = []
    for i in range(n_loop + extra):
        a = 2 * math.pi * i / n_loop
        eye = np.array([radius * math.cos(a), radius * math.sin(a), 1.5])
        out = np.array([math.cos(a + 0.6), math.sin(a + 0.6), 0.0])  # looking outwards, ahead of the path
        poses.append(look_at(eye, eye + 2.0 * out + np.array([0, 0, -0.3])))
    return np.stack(poses)


@functools.lru_cache(maxsize=4)
def _render(seed: int, width: int, height: int, n_loop: int, extra: int) -> tuple[np.ndarray, np.ndarray,
                                                                                  np.ndarray, np.ndarray]:
    K = default_intrinsics(width, height)
    poses = loop_poses(n_loop, extra)
    renderer = Renderer(build_scene(seed), K, width, height, supersample=1)
    rgbs, depths = zip(*(renderer.render(T) for T in poses), strict=True)
    return K, poses, np.stack(rgbs), np.stack(depths)


def loop_frames(*, depth: bool, seed: int = 3, width: int = 160, height: int = 120, n_loop: int = 72,
                extra: int = 8) -> tuple[list[Frame], np.ndarray]:
    """The rendered loop as frames (with metric depth and K when `depth`) and its ground-truth poses."""
    K, poses, rgbs, depths = _render(seed, width, height, n_loop, extra)
    frames = [Frame("cam", i, i * 33_333_333, rgbs[i].copy(), K=K if depth else None,
                    depth=depths[i].copy() if depth else None) for i in range(len(poses))]
    return frames, poses


def drift(i: int, yaw: float, climb: float, scale: float) -> Sim3:
    """The accumulated error after frame `i`: yaw about world z, a vertical creep, a scale change."""
    return Sim3((1.0 + scale) ** i, so3_exp(np.array([0.0, 0.0, yaw * i])), np.array([0.0, 0.0, climb * i]))


class DriftingBackend:
    """Wraps a backend and drifts its output (poses and points) by `drift(seq, ...)`, as odometry does."""

    def __init__(self, inner, yaw: float = math.radians(0.15), climb: float = 0.004, scale: float = 0.0) -> None:
        self.inner, self.name = inner, inner.name
        self.yaw, self.climb, self.scale = yaw, climb, scale

    def _drift(self, results: list[FrameResult]) -> list[FrameResult]:
        out = []
        for r in results:
            D = drift(r.seq, self.yaw, self.climb, self.scale)
            pts = None if r.points_world is None else D.apply_points(r.points_world.astype(np.float64))
            pts = None if pts is None else pts.astype(np.float32)
            depth = None if r.depth is None else r.depth * D.s
            out.append(FrameResult(r.stream_id, r.seq, r.t_ns, D.apply_poses(r.T_world_cam), r.K, depth=depth,
                                   confidence=r.confidence, points_world=pts,
                                   metric=r.metric, image=r.image, is_update=r.is_update, tracked=r.tracked))
        return out

    def reset(self) -> None:
        self.inner.reset()

    def step(self, frame: Frame) -> list[FrameResult]:
        return self._drift(self.inner.step(frame))

    def flush(self) -> list[FrameResult]:
        return self._drift(self.inner.flush())

    def stats(self):
        return self.inner.stats()
