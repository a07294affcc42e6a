"""Keyframes of the map layer: which results become keyframes, and what a keyframe keeps.

A keyframe keeps what place recognition and loop verification need and nothing more: the backend's own pose
(`T_odom_cam`, the odometry the pose graph starts from), ORB keypoints and descriptors of the full-resolution
image, and each keypoint's 3-D position in the camera frame (from the frame's depth when it has metric depth,
otherwise from the result's point map or depth), so a loop edge can be measured 3D-3D for every backend.

A live session's map is bounded (`LiveBounds`): a camera that circles one room adds keyframes (and finds loops)
for as long as it runs, and each keyframe's features are ~57 KB (1000 ORB descriptors, keypoints, 3-D points,
words). Beyond `LiveBounds.keyframes`, the oldest keyframes give up their features (`Keyframe.drop_features`):
they stay pose-graph nodes, so the graph and every frame attached to them are unchanged, but can no longer be
matched as loop candidates (the room's newer keyframes are). Recorded sources keep everything.
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
        evicted: its features were dropped (a bounded live map); had_points: whether it had 3-D keypoints then.
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
    evicted: bool = False
    had_points: bool = False

    @property
    def has_points(self) -> bool:
        if self.evicted:
            return self.had_points  # the map's scene unit stays the keyframe it was measured on
        return bool(np.isfinite(self.points_cam[:, 2]).any()) if len(self.points_cam) else False

    def drop_features(self) -> None:
        """Forget keypoints, descriptors, 3-D points and words (pose, seq and scale stay: it remains a node)."""
        self.had_points = self.has_points
        self.evicted = True
        self.keypoints = np.zeros((0, 2), np.float32)
        self.descriptors = np.zeros((0, 32), np.uint8)
        self.points_cam = np.zeros((0, 3), np.float32)
        self.words = np.zeros(0, np.int32)

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


@dataclass
class LiveBounds:
    """What the map of a live session keeps (`MapOptions.live`; 0 disables a bound). Recorded sources are not
    bounded: a replay's map is its whole sequence, and its results must not depend on these.

    Attributes:
        keyframes: keyframes holding features for place recognition; beyond it the oldest lose them
            (`evict`). 96 keep ~5.5 MB per stream and, at the 0.3-0.6 keyframes/s of a live geometric
            stream on a loaded 2-core machine, the last 3-5 minutes recognisable.
        loop_every: after a keyframe found a loop, the next `loop_every` keyframes do not search (they overlap the
            place just closed; searching them verified a loop at almost every keyframe of a camera circling a room,
            1.7 per keyframe, and each verification took 0.1-0.4 s of the step); a search also stops at its first
            verified candidate, and runs on a thread beside the stream (one at a time; `MappedBackend`), so no
            step waits for it. candidates: best-scoring candidates a live search verifies (`MapOptions.candidates`).
        loops: loops kept in the pose graph; beyond it the oldest is dropped (counted). The consistency check
            compares every pair of loops, so its cost grows with their square.
        frames: per-frame records kept to revise past frames after a loop closes; older frames are not revised.
        frame_cache: input frames kept for keyframe features (`MapOptions.frame_cache`, 64: 59 MB per stream at
            640x480); a live result arrives within a few steps of its frame (the monocular initialisation's
            revisions come later and use their result's own image).
        training_budget: `MapOptions.vocabulary_budget` for live streams, spent once per step (not per result:
            a step that emits revisions did several): 1 << 20 comparisons took 25-60 ms on the loaded 2-core machine
            (not the milliseconds of an idle one), in each of the first minutes' steps.
    """

    keyframes: int = 96
    loop_every: int = 8
    candidates: int = 1
    loops: int = 64
    frames: int = 2048
    frame_cache: int = 16
    training_budget: int = 1 << 18

    def evict(self, keyframes: list[Keyframe], protected: set[int]) -> list[int]:
        """Drop the features of the oldest keyframes while more than `self.keyframes` hold them, never of those
        in `protected` (the newest, the ends of loops not solved yet); returns the indices evicted, oldest first."""
        if self.keyframes <= 0:
            return []
        holding = [kf for kf in keyframes if not kf.evicted]
        excess = len(holding) - self.keyframes
        out: list[int] = []
        for kf in holding:
            if len(out) >= excess:
                break
            if kf.index not in protected:
                kf.drop_features()
                out.append(kf.index)
        return out
