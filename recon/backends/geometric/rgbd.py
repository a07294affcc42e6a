"""RGB-D odometry of the geometric backend: KLT tracks against depth-anchored map points, open3d as fallback.

Why this design: each corner gets its 3D position once, from the depth of the keyframe where it is first
seen, and keeps it while tracked. Frames are then posed by PnP against these world points, i.e. frame to
map rather than frame to frame, so drift grows only when points are replaced, and sub-pixel KLT with metric
depth gives millimetre steps. When features are too few (textureless walls) the frame is aligned to the last
keyframe with open3d's hybrid RGB-D odometry (photometric + point-to-plane terms) instead.

A frame neither method can pose (blank image, no depth, an implausible jump) is a tracking loss: its pose
continues from the constant-velocity guess, the next frame is tracked from the last good one, and after
`max_lost_frames` failures in a row the map is re-seeded at the predicted pose so the trajectory stays one
chain in metres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from recon.backends.geometric.features import KltTracker, to_gray
from recon.backends.geometric.pnp import rotation_deg, solve_pnp
from recon.errors import ConfigError
from recon.geometry.transforms import inv_se3
from recon.utils.imports import require_package
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)


@dataclass
class RgbdTrackResult:
    """Outcome of tracking one frame."""

    T_world_cam: np.ndarray
    ok: bool
    method: str  # "pnp", "open3d", "init", "reanchor" or "lost"
    new_keyframe: bool


class RgbdOdometry:
    """RGB-D visual odometry in metres; world = first camera.

    Args:
        K: 3x3 intrinsics of the input images.
        depth_max: depth beyond this (metres) is ignored.
        max_features: corners kept in the map at once.
        keyframe_ratio: a keyframe is added (new corners seeded) when live tracks fall below this fraction of
            those alive at the last keyframe.
        min_inliers: PnP inliers needed to accept a pose.
        max_lost_frames: failures in a row after which the map is re-seeded at the predicted pose.
        max_jump: metres a pose may differ from the constant-velocity guess before it is rejected.
        method: open3d fallback alignment: "hybrid", "point_to_plane" or "intensity"; iterations: its
            iterations per pyramid level (coarse to fine).
        reproj_px: PnP inlier threshold in pixels.
        depth_weight: weight of the depth residuals in the pose refinement (0: PnP only).
        fuse_depth: refine each map point with the depth measured at its track in every posed frame (an
            inverse-variance mean, variance growing with z^4 like a structured-light sensor's), instead of
            keeping the single noisy sample of the keyframe it was seeded in.
        anchor_tracks: re-measure tracks against the keyframe they were seeded in (off: did not help on
            rendered rooms).
        klt: options of KltTracker.
    """

    def __init__(self, K: np.ndarray, *, depth_max: float = 8.0, max_features: int = 400,
                 keyframe_ratio: float = 0.7, min_tracks: int = 120, min_inliers: int = 20,
                 max_lost_frames: int = 5, max_jump: float = 0.5, method: str = "hybrid", reproj_px: float = 2.0,
                 anchor_tracks: bool = False, depth_weight: float = 1.0, fuse_depth: bool = True,
                 iterations: tuple[int, ...] = (20, 10, 5), klt: dict[str, Any] | None = None) -> None:
        self._o3d = require_package("open3d")
        odo = self._o3d.t.pipelines.odometry
        methods = {"hybrid": odo.Method.Hybrid, "point_to_plane": odo.Method.PointToPlane,
                   "intensity": odo.Method.Intensity}
        if method not in methods:
            raise ConfigError(f"RGB-D odometry: method must be one of {sorted(methods)}, got {method!r}")
        self._method = methods[method]
        self._criteria = [odo.OdometryConvergenceCriteria(int(n)) for n in iterations]
        self.K = np.asarray(K, dtype=np.float64)
        self._K_t = self._o3d.core.Tensor(self.K)
        self.depth_max = float(depth_max)
        self.max_features = int(max_features)
        self.keyframe_ratio = float(keyframe_ratio)
        self.min_tracks = int(min_tracks)
        self.min_inliers = int(min_inliers)
        self.max_lost_frames = int(max_lost_frames)
        self.max_jump = float(max_jump)
        self.reproj_px = float(reproj_px)
        self.anchor_tracks = bool(anchor_tracks)
        self.depth_weight = float(depth_weight)
        self.fuse_depth = bool(fuse_depth)
        self._klt_options = dict(klt or {})
        self._warn = WarnOnce(logger)
        self.reset()

    def reset(self) -> None:
        """Forget the map and the motion model."""
        self.klt = KltTracker(max_corners=self.max_features, **self._klt_options)
        self._prev_gray: np.ndarray | None = None
        self._pts = np.zeros((0, 2), np.float32)  # live tracks in the last good frame
        self._xyz = np.zeros((0, 3))  # their world points
        self._w = np.zeros(0)  # inverse-variance weight of each world point (depth fusion)
        self._ref_kf = np.zeros(0, np.int64)  # keyframe each track was seeded in
        self._ref_pts = np.zeros((0, 2), np.float32)  # and its position there
        self._ref_grays: dict[int, np.ndarray] = {}
        self._kf_rgbd: Any = None  # open3d image of the last keyframe (fallback alignment)
        self._kf_tracks = 0
        self.T_world_kf = np.eye(4)
        self.T_world_last = np.eye(4)  # last emitted pose (tracked or predicted)
        self.T_world_good = np.eye(4)  # last tracked pose
        self.velocity = np.eye(4)  # T_prev_cur per frame
        self.started = False
        self.lost_in_row = 0
        self.keyframes = 0
        self.losses = 0
        self.reanchors = 0
        self.fallbacks = 0

    @property
    def n_tracks(self) -> int:
        return int(len(self._pts))

    def track(self, rgb: np.ndarray, depth: np.ndarray) -> RgbdTrackResult:
        """Pose of this frame; bad input is a tracking loss, never an exception."""
        depth = np.where(np.isfinite(depth) & (depth > 0) & (depth < self.depth_max), depth, 0.0).astype(np.float32)
        gray = to_gray(rgb)
        has_depth = float(np.mean(depth > 0)) > 0.05
        if not self.started:
            if not has_depth:
                return self._lost()
            self.started = True
            self._keyframe(rgb, gray, depth, self.T_world_last, replace=True)
            return RgbdTrackResult(self.T_world_last.copy(), True, "init", True)

        guess = self.T_world_last @ self.velocity
        T_world_cur, method = None, "lost"
        if self._prev_gray is not None and len(self._pts):
            pts, ok = self.klt.track(self._prev_gray, gray, self._pts)
            if self.anchor_tracks:
                for kf in np.unique(self._ref_kf[ok]):
                    sel = np.flatnonzero(ok & (self._ref_kf == kf))
                    pts[sel], ok[sel] = self.klt.refine(self._ref_grays[int(kf)], gray, self._ref_pts[sel], pts[sel])
            res = solve_pnp(self._xyz[ok], pts[ok], self.K, inv_se3(guess), min_inliers=self.min_inliers,
                             reproj_px=self.reproj_px)
            if res is not None and self._plausible(inv_se3(res[0]), guess):
                keep = np.flatnonzero(ok)[res[1]]
                T_cw = res[0]
                if self.depth_weight > 0:
                    T_cw = self._refine_with_depth(T_cw, self._xyz[keep], pts[keep], depth)
                T_world_cur, method = inv_se3(T_cw), "pnp"
                self._select(keep, pts)
                if self.fuse_depth:
                    self._fuse(depth, T_world_cur)
        if T_world_cur is None and has_depth and self._kf_rgbd is not None:
            T_world_cur = self._align_open3d(rgb, depth, guess)
            if T_world_cur is not None:
                method = "open3d"
                self.fallbacks += 1
                self._select(np.zeros(0, np.int64))  # tracks are unreliable: re-seed below
        if T_world_cur is None:
            result = self._lost()
            if self.lost_in_row > self.max_lost_frames and has_depth:
                self.reanchors += 1
                logger.info("RGB-D odometry: re-seeded the map after %d lost frames", self.lost_in_row)
                self._keyframe(rgb, gray, depth, result.T_world_cam, replace=True)
                self.lost_in_row = 0
                result.new_keyframe, result.method = True, "reanchor"
            return result

        self.velocity = inv_se3(self.T_world_last) @ T_world_cur
        self.T_world_last = self.T_world_good = T_world_cur
        self.lost_in_row = 0
        self._prev_gray = gray
        new_kf = self.n_tracks < max(self.min_tracks, self.keyframe_ratio * self._kf_tracks)
        if new_kf:
            self._keyframe(rgb, gray, depth, T_world_cur, replace=False)
        return RgbdTrackResult(T_world_cur.copy(), True, method, new_kf)

    def _refine_with_depth(self, T_cw: np.ndarray, X_n3: np.ndarray, uv_n2: np.ndarray, depth: np.ndarray
                           ) -> np.ndarray:
        """Refine T_cw on reprojection errors plus the measured depth at each tracked pixel.

        PnP alone constrains the motion along the optical axis weakly (a far scene looks alike when moved
        closer); the current depth map measures it directly. Depth residuals are scaled by f / z into pixel
        units and sampled bilinearly only where the 2x2 neighbourhood is smooth (no depth edge).
        """
        from scipy.optimize import least_squares
        from scipy.spatial.transform import Rotation

        h, w = depth.shape
        u0 = np.clip(np.floor(uv_n2[:, 0]).astype(int), 0, w - 2)
        v0 = np.clip(np.floor(uv_n2[:, 1]).astype(int), 0, h - 2)
        fu, fv = uv_n2[:, 0] - u0, uv_n2[:, 1] - v0
        d00, d01, d10, d11 = depth[v0, u0], depth[v0, u0 + 1], depth[v0 + 1, u0], depth[v0 + 1, u0 + 1]
        quad = np.stack([d00, d01, d10, d11], 1)
        smooth = (quad.min(1) > 0) & (quad.max(1) - quad.min(1) < 0.01 * quad.max(1))
        d = (d00 * (1 - fu) * (1 - fv) + d01 * fu * (1 - fv) + d10 * (1 - fu) * fv + d11 * fu * fv)[smooth]
        if smooth.sum() < 10:
            return T_cw
        f = self.K[0, 0]
        weight = self.depth_weight * f / d
        Xd = X_n3[smooth]

        def residuals(x: np.ndarray) -> np.ndarray:
            R = Rotation.from_rotvec(x[:3]).as_matrix()
            Xc = X_n3 @ R.T + x[3:]
            z = np.maximum(Xc[:, 2], 1e-6)
            proj = Xc[:, :2] / z[:, None] * [self.K[0, 0], self.K[1, 1]] + self.K[:2, 2]
            zd = (Xd @ R[2] + x[5])
            return np.concatenate([(proj - uv_n2).ravel(), weight * (zd - d)])

        x0 = np.concatenate([Rotation.from_matrix(T_cw[:3, :3]).as_rotvec(), T_cw[:3, 3]])
        sol = least_squares(residuals, x0, method="trf", loss="huber", f_scale=1.0, max_nfev=20)
        T = np.eye(4)
        T[:3, :3] = Rotation.from_rotvec(sol.x[:3]).as_matrix()
        T[:3, 3] = sol.x[3:]
        return T if np.all(np.isfinite(T)) else T_cw

    def _fuse(self, depth: np.ndarray, T_world_cam: np.ndarray) -> None:
        """Average each live track's world point with the point its depth gives in this frame.

        Only where the 3x3 depth neighbourhood is smooth (no edge) and the new point lies within 3 sigma of
        the map point along the ray (a gross disagreement is a wrong track or an occlusion, not noise).
        """
        if not len(self._pts):
            return
        h, w = depth.shape
        u = np.clip(np.round(self._pts[:, 0]).astype(int), 0, w - 1)
        v = np.clip(np.round(self._pts[:, 1]).astype(int), 0, h - 1)
        z = depth[v, u]
        lo, hi = _min3(depth)[v, u], _max3(depth)[v, u]
        X_cam = np.stack([(self._pts[:, 0] - self.K[0, 2]) * z / self.K[0, 0],
                          (self._pts[:, 1] - self.K[1, 2]) * z / self.K[1, 1], z], 1)
        X_new = X_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
        sigma = _depth_sigma(np.maximum(z, 1e-3))
        ok = (z > 0) & (lo > 0) & (hi - lo < 0.02 * z) & (np.linalg.norm(X_new - self._xyz, axis=1) < 3 * sigma)
        w_new = np.where(ok, _depth_weight(z), 0.0)
        total = self._w + w_new
        self._xyz = np.where(ok[:, None], (self._w[:, None] * self._xyz + w_new[:, None] * X_new)
                             / np.maximum(total, 1e-12)[:, None], self._xyz)
        self._w = total

    def _select(self, keep: np.ndarray, pts: np.ndarray | None = None) -> None:
        """Keep the tracks indexed by `keep` (with new positions `pts` if given); forget unused references."""
        self._pts = (self._pts if pts is None else pts)[keep]
        self._xyz, self._ref_kf, self._ref_pts = self._xyz[keep], self._ref_kf[keep], self._ref_pts[keep]
        self._w = self._w[keep]
        live = set(np.unique(self._ref_kf).tolist())
        self._ref_grays = {k: g for k, g in self._ref_grays.items() if k in live}

    def _plausible(self, T_world_cur: np.ndarray, guess: np.ndarray) -> bool:
        jump = inv_se3(guess) @ T_world_cur
        return bool(np.linalg.norm(jump[:3, 3]) < self.max_jump and rotation_deg(jump) < 30.0)

    def _keyframe(self, rgb: np.ndarray, gray: np.ndarray, depth: np.ndarray, T_world_cam: np.ndarray,
                  replace: bool) -> None:
        """Seed new corners with depth (away from live tracks) and remember this frame for the fallback."""
        if replace:
            self._select(np.zeros(0, np.int64))
        pts, _ = self.klt.detect(gray, self._pts, self.max_features - self.n_tracks)
        if len(pts):
            u, v = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
            z = depth[v, u]
            # Reject corners on depth edges: their depth belongs to either side, their appearance to both.
            lo = _min3(depth)[v, u]
            hi = _max3(depth)[v, u]
            good = (z > 0) & (lo > 0) & (hi - lo < 0.02 * z)
            pts, u, v, z = pts[good], u[good], v[good], z[good]
            X_cam = np.stack([(u - self.K[0, 2]) * z / self.K[0, 0], (v - self.K[1, 2]) * z / self.K[1, 1], z], 1)
            X_world = X_cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]
            uv = np.stack([u, v], 1).astype(np.float32)
            self._pts = np.concatenate([self._pts, uv])
            self._xyz = np.concatenate([self._xyz, X_world])
            self._ref_pts = np.concatenate([self._ref_pts, uv])
            self._ref_kf = np.concatenate([self._ref_kf, np.full(len(uv), self.keyframes, np.int64)])
            self._w = np.concatenate([self._w, _depth_weight(z)])
            self._ref_grays[self.keyframes] = gray
        self._prev_gray = gray
        self._kf_tracks = self.n_tracks
        self._kf_rgbd = self._rgbd(rgb, depth)
        self.T_world_kf = T_world_cam.copy()
        self.keyframes += 1

    def _rgbd(self, rgb: np.ndarray, depth: np.ndarray) -> Any:
        o3d = self._o3d
        color = o3d.t.geometry.Image(o3d.core.Tensor(rgb.astype(np.float32) / 255.0))
        return o3d.t.geometry.RGBDImage(color, o3d.t.geometry.Image(o3d.core.Tensor(depth[..., None])))

    def _align_open3d(self, rgb: np.ndarray, depth: np.ndarray, guess_world: np.ndarray) -> np.ndarray | None:
        """T_world_cur by open3d RGB-D odometry against the last keyframe, or None if it fails."""
        o3d = self._o3d
        odo = o3d.t.pipelines.odometry
        init = inv_se3(self.T_world_kf) @ guess_world
        try:
            res = odo.rgbd_odometry_multi_scale(self._rgbd(rgb, depth), self._kf_rgbd, self._K_t,
                                                o3d.core.Tensor(init), 1.0, self.depth_max, self._criteria,
                                                self._method)
        except RuntimeError as e:  # open3d raises on degenerate systems (no valid correspondences)
            logger.debug("open3d RGB-D odometry failed: %s", e)
            return None
        T_kf_cur = res.transformation.numpy().astype(np.float64)
        if not np.all(np.isfinite(T_kf_cur)) or float(res.fitness) < 0.3:
            return None
        T_world_cur = self.T_world_kf @ T_kf_cur
        return T_world_cur if self._plausible(T_world_cur, guess_world) else None

    def _lost(self) -> RgbdTrackResult:
        """Count a loss; the pose continues from the constant-velocity guess for a few frames, then holds."""
        self.losses += 1
        self.lost_in_row += 1
        self._warn("tracking_lost", "RGB-D odometry lost tracking (no usable depth, too few PnP inliers and the "
                   "open3d alignment failed); continuing from a constant-velocity guess")
        if self.started and self.lost_in_row <= self.max_lost_frames:
            self.T_world_last = self.T_world_last @ self.velocity
        return RgbdTrackResult(self.T_world_last.copy(), False, "lost", False)


def _depth_sigma(z: np.ndarray) -> np.ndarray:
    """Depth noise std (metres) of a structured-light sensor: quadratic in z (Khoshelham & Elberink 2012)."""
    return 0.0012 + 0.0019 * (z - 0.4) ** 2 + 0.002  # + 2 mm for the tracks' sub-pixel error at the edges


def _depth_weight(z: np.ndarray) -> np.ndarray:
    return 1.0 / _depth_sigma(np.maximum(z, 1e-3)) ** 2


def _min3(depth: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.erode(depth, np.ones((3, 3), np.uint8))


def _max3(depth: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.dilate(depth, np.ones((3, 3), np.uint8))
