"""Keyframes of the map layer: which results become keyframes, and what a keyframe keeps.

A keyframe keeps what place recognition and loop verification need and nothing more: the backend's own pose
(`T_odom_cam`, the odometry the pose graph starts from), ORB keypoints and descriptors of the full-resolution
image, and each keypoint's 3-D position in the camera frame (from the frame's depth when it has metric depth,
otherwise from the result's point map or depth), so a loop edge can be measured 3D-3D for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from recon.geometry import inv_se3, rotation_angle
from recon.types import FrameResult


@dataclass
class Keyframe:
    """One keyframe (plain arrays, so the map can be checkpointed).

    Attributes:
        index: position in the keyframe database (0, 1, ...).
        seq, t_ns: of the frame it was made from.
        T_odom_cam: the backend's pose of the frame (odometry frame), 4x4.
        keypoints: float32 [n,2] pixel positions in the full-resolution image.
        descriptors: uint8 [n,32] ORB descriptors.
        points_cam: float32 [n,3] keypoint positions in the camera frame; NaN where unknown.
        size: (width, height) of the image the keypoints are in.
        scale: median keypoint depth (the keyframe's scene scale in its own units; 1 when unknown).
        words: vocabulary word of each descriptor (int32 [n]); empty until a vocabulary exists.
    """

    index: int
    seq: int
    t_ns: int
    T_odom_cam: np.ndarray
    keypoints: np.ndarray
    descriptors: np.ndarray
    points_cam: np.ndarray
    size: tuple[int, int] = (0, 0)
    scale: float = 1.0
    words: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    @property
    def has_points(self) -> bool:
        return bool(np.isfinite(self.points_cam[:, 2]).any()) if len(self.points_cam) else False

    def refresh_points(self, result: FrameResult, depth: np.ndarray | None = None) -> None:
        """Take 3-D keypoints from a revised result of the same frame (where it has them) and re-measure the scale."""
        pts = keypoint_points(result, self.keypoints, self.size[0], self.size[1], depth)
        ok = np.isfinite(pts[:, 2])
        if ok.any():
            self.points_cam = np.where(ok[:, None], pts, self.points_cam).astype(np.float32)
        z = self.points_cam[:, 2][np.isfinite(self.points_cam[:, 2])]
        if len(z):
            self.scale = float(np.median(z))


def full_resolution_K(result: FrameResult, width: int, height: int) -> np.ndarray:
    """The result's intrinsics (on its output grid) rescaled to a `width` x `height` image of the same view."""
    grid_h, grid_w = _grid_hw(result) or (height, width)
    sx, sy = width / grid_w, height / grid_h
    K = result.K.copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def _grid_hw(result: FrameResult) -> tuple[int, int] | None:
    for arr in (result.points_world, result.depth, result.image):
        if arr is not None:
            return int(arr.shape[0]), int(arr.shape[1])
    return None


def keypoint_points(result: FrameResult, kp_n2: np.ndarray, width: int, height: int,
                    depth: np.ndarray | None = None) -> np.ndarray:
    """Camera-frame 3-D points [n,3] of keypoints at full-resolution pixels `kp_n2` (NaN where unknown).

    Sources, best first: the frame's own depth (full resolution, when the result is metric), the result's world
    point map brought back into the camera frame, the result's depth on its grid.
    """
    n = len(kp_n2)
    out = np.full((n, 3), np.nan, np.float32)
    if n == 0:
        return out
    if depth is not None and result.metric and depth.shape == (height, width):
        K = full_resolution_K(result, width, height)
        u = np.clip(np.round(kp_n2[:, 0]).astype(int), 0, width - 1)
        v = np.clip(np.round(kp_n2[:, 1]).astype(int), 0, height - 1)
        return _backproject(kp_n2, depth[v, u], K)
    hw = _grid_hw(result)
    if hw is None:
        return out
    gh, gw = hw
    gu = np.clip(np.round((kp_n2[:, 0] + 0.5) * gw / width - 0.5).astype(int), 0, gw - 1)
    gv = np.clip(np.round((kp_n2[:, 1] + 0.5) * gh / height - 0.5).astype(int), 0, gh - 1)
    conf_ok = np.ones(n, bool) if result.confidence is None else result.confidence[gv, gu] > 0
    if result.points_world is not None:
        pw = result.points_world[gv, gu].astype(np.float64)
        T_cam_world = inv_se3(result.T_world_cam)
        pc = pw @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
        ok = conf_ok & np.all(np.isfinite(pc), axis=1) & (pc[:, 2] > 0)
        out[ok] = pc[ok]
        return out
    if result.depth is not None:
        z = np.where(conf_ok, result.depth[gv, gu], 0.0)
        return _backproject(kp_n2, z, full_resolution_K(result, width, height))
    return out


def _backproject(kp_n2: np.ndarray, z_n: np.ndarray, K: np.ndarray) -> np.ndarray:
    z = np.asarray(z_n, np.float64)
    ok = np.isfinite(z) & (z > 0)
    x = (kp_n2[:, 0] - K[0, 2]) / K[0, 0] * z
    y = (kp_n2[:, 1] - K[1, 2]) / K[1, 1] * z
    pts = np.stack([x, y, z], axis=1).astype(np.float32)
    pts[~ok] = np.nan
    return pts


class OrbExtractor:
    """ORB keypoints and descriptors (OpenCV): binary, rotation invariant, free of weights and licences.

    Images narrower than `min_width` are upsampled by an integer factor first: ORB's 31-pixel patches and
    8-level pyramid find few corners in a 160-pixel image (keypoints are returned in the original pixels).
    """

    def __init__(self, n_features: int = 1000, min_width: int = 480) -> None:
        self.n_features = int(n_features)
        self.min_width = int(min_width)
        self._orb = cv2.ORB_create(nfeatures=self.n_features, scaleFactor=1.2, nlevels=8, fastThreshold=12)

    def __call__(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        up = max(1, -(-self.min_width // gray.shape[1]))
        img = gray if up == 1 else cv2.resize(gray, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR)
        kps, desc = self._orb.detectAndCompute(img, None)
        if desc is None or not kps:
            return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
        pts = (np.array([k.pt for k in kps], np.float32) + 0.5) / up - 0.5
        return pts.astype(np.float32), desc


@dataclass
class KeyframePolicy:
    """When a result becomes a keyframe: enough motion since the last one, or enough frames.

    Translation is relative to the last keyframe's scene scale (median keypoint depth), so the rule is the same
    for metric and up-to-scale backends.
    """

    translation: float = 0.12
    rotation_deg: float = 10.0
    max_gap: int = 30

    def is_keyframe(self, T_odom_cam: np.ndarray, seq: int, last: Keyframe | None) -> bool:
        if last is None:
            return True
        if seq - last.seq >= self.max_gap:
            return True
        rel = inv_se3(last.T_odom_cam) @ T_odom_cam
        moved = float(np.linalg.norm(rel[:3, 3])) / max(last.scale, 1e-9)
        return moved >= self.translation or np.degrees(rotation_angle(rel[:3, :3])) >= self.rotation_deg
