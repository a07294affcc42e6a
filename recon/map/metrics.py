"""Loop-closure figures of a trajectory that returns to its start, and the recorder of a backend's own poses.

The figures are `recon.eval.trajectory`'s (return error and vertical drift as fractions of the path length), in
one dict for the map layer's tests and `recon bench loop`.

A hand-held walk rarely ends exactly where it began: `lingbot_loop` ends at the viewpoint of its frame ~13, a
few per cent of the path ahead of frame 0, so its first-to-last distance measures the walk as much as the map.
`revisited_frame` finds, from the images alone (two-view geometry, no estimated pose), the early frame the last
one sees from the same place, so the closure can also be scored against the place actually revisited.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from recon.eval.trajectory import loop_return_error, trajectory_length, vertical_drift
from recon.types import BackendStats, Frame, FrameResult


def loop_figures(T_world_cam: np.ndarray) -> dict[str, float]:
    """{"path", "return_error", "vertical_drift"} of poses [N,4,4] in frame order (fractions of the path)."""
    T = np.asarray(T_world_cam, np.float64)
    return {"path": trajectory_length(T), "return_error": loop_return_error(T), "vertical_drift": vertical_drift(T)}


def revisit_error(T_world_cam: np.ndarray, index: int) -> float:
    """Distance from the last camera centre to that of frame `index` (the place revisited), over the path."""
    T = np.asarray(T_world_cam, np.float64)
    return float(np.linalg.norm(T[-1, :3, 3] - T[index, :3, 3]) / trajectory_length(T))


@dataclass(frozen=True)
class Revisit:
    """The early frame the last frame revisits: its index, the two-view inliers and the median de-rotated parallax
    (degrees) of those inliers: about 0 when both cameras stand at the same place, whatever their rotation."""

    index: int
    inliers: int
    parallax_deg: float


def _rotation_residual_deg(ra: np.ndarray, rb: np.ndarray) -> float:
    """Median angle (degrees) between unit rays `rb` and `R ra` for the rotation R that fits them best (orthogonal
    Procrustes, refitted once on the better half): the part of the image motion that no rotation explains,
    i.e. the parallax of a translation. Unlike an essential matrix it stays defined at zero translation."""
    keep = np.ones(len(ra), bool)
    for _ in range(2):
        U, _, Vt = np.linalg.svd(rb[keep].T @ ra[keep])
        R = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
        angle = np.degrees(np.arccos(np.clip(np.sum(rb * (ra @ R.T), axis=1), -1.0, 1.0)))
        keep = angle <= np.median(angle)
    return float(np.median(angle))


def revisited_frame(first: list[np.ndarray], last: np.ndarray, K: np.ndarray, *, min_inliers: int = 50,
                    features: int = 2000) -> Revisit | None:
    """Of the images `first` (early frames, RGB), the one taken from the place where `last` was taken.

    Each candidate is matched to `last` (ORB, ratio test); an essential matrix fitted by RANSAC with `K`
    (full-resolution intrinsics) keeps the matches consistent with one rigid motion, and the parallax is what
    of their image motion a pure rotation cannot explain. Among candidates with at least `min_inliers` and half
    the best candidate's inliers (so a barely overlapping view cannot win on a few points), the one with the
    least parallax is returned; None when no candidate has enough inliers.
    """
    import cv2

    from recon.geometry.epipolar import consistent_matches
    from recon.map.keyframes import OrbExtractor
    from recon.map.verify import match_descriptors

    orb = OrbExtractor(features)
    Kinv = np.linalg.inv(K)

    def features_of(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return orb(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))

    def rays(uv: np.ndarray) -> np.ndarray:
        r = np.c_[uv, np.ones(len(uv))] @ Kinv.T
        return r / np.linalg.norm(r, axis=1, keepdims=True)

    kp_last, d_last = features_of(last)
    found: list[Revisit] = []
    for i, image in enumerate(first):
        kp, desc = features_of(image)
        pairs = match_descriptors(desc, d_last, 0.8)
        if len(pairs) < min_inliers:
            continue
        a, b = kp[pairs[:, 0]].astype(np.float64), kp_last[pairs[:, 1]].astype(np.float64)
        inl = consistent_matches(a, b, K, 1.0)
        if inl.sum() < min_inliers:
            continue
        found.append(Revisit(i, int(inl.sum()), _rotation_residual_deg(rays(a[inl]), rays(b[inl]))))
    if not found:
        return None
    best_inliers = max(r.inliers for r in found)
    return min((r for r in found if 2 * r.inliers >= best_inliers), key=lambda r: r.parallax_deg)


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


def segment_scales(T_est: np.ndarray, T_gt: np.ndarray, length: int) -> np.ndarray:
    """Scale of each run of `length` frames: its path length in the estimate over the ground truth's, divided by
    the median over all runs (so a global scale does not count). A map whose scale drifts has runs far from 1."""
    def steps(T: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.diff(np.asarray(T, np.float64)[:, :3, 3], axis=0), axis=1)

    e, g = steps(T_est), steps(T_gt)
    n = len(e) // length
    ratios = np.array([e[i * length:(i + 1) * length].sum() / max(g[i * length:(i + 1) * length].sum(), 1e-12)
                       for i in range(n)])
    return ratios / np.median(ratios)
