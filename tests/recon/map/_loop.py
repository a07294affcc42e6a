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
from recon.types import BackendStats, ChunkLink, Frame, FrameResult


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


class DriftingBackend:
    """Wraps a backend and makes its odometry drift the way real odometry does: every relative motion picks up
    a small error (a yaw about the camera's up axis, a creep along it, a scale change for up-to-scale backends),
    so the error accumulates along the path. Points move with their frame's drifted pose.

    `chunk` > 0 adds what windowed learned backends do: every `chunk` frames a new chunk starts whose scale jumps
    by the next factor of `jumps` (cycled); with `tag_chunks` the results say which chunk they come from
    (`FrameResult.chunk`, as LASER's do)."""

    def __init__(self, inner, yaw: float = math.radians(0.3), climb: float = 0.004, scale: float = 0.0, *,
                 chunk: int = 0, jumps: tuple[float, ...] = (1.0,), tag_chunks: bool = False) -> None:
        self.inner, self.name = inner, inner.name
        self.yaw, self.climb, self.scale = yaw, climb, scale
        self.chunk, self.jumps, self.tag_chunks = chunk, jumps, tag_chunks
        self.reset_drift()

    def reset_drift(self) -> None:
        self._last: tuple[np.ndarray, np.ndarray, float] | None = None  # raw pose, drifted pose, scale so far
        self._by_seq: dict[int, Sim3] = {}

    def _error(self) -> np.ndarray:
        E = np.eye(4)
        E[:3, :3] = so3_exp(np.array([0.0, -self.yaw, 0.0]))  # camera y points down: -y is up
        E[1, 3] = -self.climb
        return E

    def _drift(self, results: list[FrameResult]) -> list[FrameResult]:
        out = []
        for r in results:
            D = self._by_seq.get(r.seq)
            if D is None:
                if self._last is None:
                    T_new, s = r.T_world_cam.copy(), 1.0
                else:
                    raw, drifted, s = self._last
                    rel = np.linalg.inv(raw) @ r.T_world_cam
                    s *= 1.0 + self.scale
                    if self.chunk and r.seq % self.chunk == 0:
                        s *= self.jumps[(r.seq // self.chunk - 1) % len(self.jumps)]
                    rel[:3, 3] *= s
                    T_new = drifted @ self._error() @ rel
                self._last = (r.T_world_cam.copy(), T_new, s)
                # points: camera frame of the raw pose, scaled by the accumulated scale, into the drifted pose
                D = Sim3.from_se3(T_new) @ Sim3(s, np.eye(3), np.zeros(3)) @ Sim3.from_se3(r.T_world_cam).inverse()
                self._by_seq[r.seq] = D
            pts = None if r.points_world is None else D.apply_points(r.points_world.astype(np.float64))
            pts = None if pts is None else pts.astype(np.float32)
            depth = None if r.depth is None else (r.depth * D.s).astype(np.float32)
            chunk = ChunkLink(r.seq // self.chunk) if self.tag_chunks and self.chunk else r.chunk
            out.append(FrameResult(r.stream_id, r.seq, r.t_ns, D.apply_poses(r.T_world_cam), r.K, depth=depth,
                                   confidence=r.confidence, points_world=pts,
                                   metric=r.metric, image=r.image, is_update=r.is_update, tracked=r.tracked,
                                   chunk=chunk))
        return out

    def reset(self) -> None:
        self.inner.reset()
        self.reset_drift()

    def step(self, frame: Frame) -> list[FrameResult]:
        return self._drift(self.inner.step(frame))

    def flush(self) -> list[FrameResult]:
        return self._drift(self.inner.flush())

    def stats(self):
        return self.inner.stats()


class OraclePointMaps:
    """Ground-truth poses and point maps in arbitrary units (metric=False), shaped like a learned backend's;
    `metric=True` with units 1 stands for a metric RGB-D tracker."""

    name = "oracle"

    def __init__(self, poses: np.ndarray, units: float = 0.37, metric: bool = False) -> None:
        self.poses, self.units, self.metric = poses, units, metric

    def reset(self) -> None:
        pass

    def step(self, frame: Frame) -> list[FrameResult]:
        from recon.geometry import depth_to_world_points

        T = self.poses[frame.seq].copy()
        T[:3, 3] *= self.units
        depth = frame.depth * self.units
        pts = depth_to_world_points(depth, frame.K, T).astype(np.float32)
        return [FrameResult(frame.stream_id, frame.seq, frame.t_ns, T, frame.K, depth=depth,
                            confidence=(depth > 0).astype(np.float32), points_world=pts, metric=self.metric,
                            image=frame.image)]

    def flush(self) -> list[FrameResult]:
        return []

    def stats(self) -> BackendStats:
        return BackendStats()
