"""Monocular keyframe visual odometry of the geometric backend (OpenCV + scipy), in one arbitrary scale.

Pipeline: Shi-Tomasi corners tracked with KLT; two-view initialisation from the essential matrix (5-point
RANSAC + recoverPose) once the median flow and the triangulation angle show enough parallax; every later
frame posed by RANSAC PnP against the triangulated map points, seeded with a constant-velocity guess;
keyframes when tracks thin out, where tracks without a point are triangulated against the oldest window
keyframe that saw them, followed by a local bundle adjustment of the last `ba_window` keyframes.

Gauge and scale: the oldest window keyframe is fixed and the distance from it to the newest is held by a soft
prior, so the scale propagates from window to window while a poorly conditioned early pair can still move.
The first map has median scene depth 1 in its first keyframe. World = the first camera.

Why the initial views are bundle-adjusted together: a two-view reconstruction a few frames apart leaves the
translation direction and the depths poorly conditioned, and every later frame inherits that distortion as a
scale drift; the held frames between the two views see the same tracks, so they are added as cameras.

Output: a frame seen while the map initialises (initialisation needs parallax) is emitted at once with
`tracked=False` (no pose yet; sinks and trajectories skip it), and re-emitted as an `is_update` revision with
its pose from the multi-view initialisation once that succeeds, so a live stream never waits for parallax
(with `emit_updates` off they are held and emitted once, posed). Frames already emitted are re-emitted with
`is_update=True` when the bundle adjustment moves their keyframe noticeably (pose relative to the keyframe
kept; points moved rigidly with it), so trajectory writers keep the refined poses.

Point maps are built from the map points tracked in the frame: with
`points="dense"` their depths are interpolated linearly over a Delaunay triangulation of their pixels
(confidence 1 inside the convex hull, 0 and NaN points outside), with `points="sparse"` only the grid cells
holding a tracked point are filled. Dense maps are smooth across depth edges: they are a preview, not a
reconstruction.

Tracking loss (KLT + PnP fail: blank frame, fast motion, occlusion) first tries relocalisation: ORB descriptors
of the keyframes' map points matched against the frame and RANSAC PnP (recon.backends.geometric.reloc). A frame
that still has no pose is logged once, counted and emitted with `tracked=False` (its placeholder pose is the
constant-velocity guess, which only seeds the next frame's PnP and never enters a trajectory). After
`max_lost_frames` failures in a row the map is dropped and initialisation restarts; until the new map is
initialised every frame is also matched against the lost map's keyframes, and a match continues the old map
(same frame, same scale). A new map is chained to the old trajectory at the predicted pose of its first keyframe,
with the scale that gives it the old map's median scene depth (the best guess when nothing is shared).

Intrinsics: with `calibrate_focal` (the backend sets it when no K is known) the focal length is searched when the
map is initialised and refined by the bundle adjustments of the first keyframes (recon.backends.geometric.selfcalib);
`counters()["intrinsics"]` says the value and its source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from recon.backends import snapshot
from recon.backends.geometric.background import BundleJob
from recon.backends.geometric.bundle import bundle_adjust
from recon.backends.geometric.features import KltTracker, to_gray
from recon.backends.geometric.grid import depth_point_map, strided_K
from recon.backends.geometric.pnp import rotation_deg, solve_pnp
from recon.backends.geometric.reloc import DescriptorDatabase
from recon.errors import ConfigError
from recon.geometry.epipolar import essential_ransac
from recon.geometry.transforms import inv_se3
from recon.types import Frame, FrameResult
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)


@dataclass
class _Keyframe:
    index: int
    T_cw: np.ndarray  # world-to-camera
    obs: dict[int, np.ndarray] = field(default_factory=dict)  # track id -> pixel


@dataclass
class _Pending:
    """A frame held during initialisation, with where the initialisation tracks were seen in it."""

    frame: Frame
    ids: np.ndarray
    pts: np.ndarray


class MonoVO:
    """Keyframe visual odometry for uncalibrated-scale monocular video.

    Args:
        K: 3x3 intrinsics; width, height: input size; stride: output grid stride; points: "dense" | "sparse".
        max_features: live tracks kept; min_tracks / keyframe_ratio: keyframe triggers.
        min_init_px: median flow (pixels) before trying initialisation (default 2% of the image diagonal).
        min_init_deg / min_tri_deg: median triangulation angle for initialisation / angle for a new point.
        ba_window: keyframes in the local bundle adjustment; max_kf_gap: frames between keyframes at most.
        focal_iterations: evaluations of the adjustments that refine a focal length starting from the guess (the
            focal search was not confident). 20 (= ba_iterations) by default; 60 calibrated the fast degraded walk
            and two rendered loops that 20 left 8-10 % off, but pushed one test sequence (forward, f 1.3 x width)
            from 1.96 to 2.02 % ATE, over its threshold (docs/benchmarks.md, monocular section, part E).
        min_inliers: PnP inliers needed to accept a pose; max_lost_frames: failures before re-initialising.
        max_pending: frames held while initialising before the oldest is emitted with a guessed pose.
        reproj_px: PnP / triangulation inlier threshold; ba_outlier_px: points with a larger residual after the
            adjustment are dropped; huber_px: Huber scale of the adjustment; ba_iterations: its evaluations.
        soft_scale: hold the scale by the oldest-to-newest distance (else: fix the two oldest keyframes).
        ba_fix_newest: also hold the newest keyframe at its PnP pose (off: measured worse on rendered rooms).
        init_ba: bundle-adjust the held frames of the initialisation; emit_updates: re-emit revised poses.
        anchor_tracks: re-measure each track against the image it was detected in (off: did not help on
            rendered rooms, where frame-to-frame flow with a forward-backward check was more accurate).
        klt: options of KltTracker (defaults here: 7 px between corners, 4 pyramid levels).
        relocalise: when KLT + PnP fail, match ORB descriptors against the keyframes (local window first) and
            pose the frame by PnP (recon.backends.geometric.reloc); reloc: options of DescriptorDatabase
            (here `max_keyframes` defaults to 32: the cost of a failed attempt and the memory grow with it).
        calibrate_focal: K is a guess: estimate the focal length when the map is initialised
            (recon.backends.geometric.selfcalib) and refine it in the bundle adjustments of the first
            `focal_keyframes` keyframes (principal point kept at K's).
        background_ba: where the keyframe bundle adjustment runs: "live" (default: on a background thread for
            frames marked live, `frame.meta["live"]`, in the step for recorded ones), "always" or "never".
            In the background the keyframe step returns with the keyframe's PnP pose; the adjustment is
            applied at the first step after it finishes (one in flight at a time), and the frames it moved are
            re-emitted as revisions. Recorded sources stay in the step so a replay is deterministic.
        sync_keyframes: the first keyframes of each map are adjusted in the step even in the background mode:
            they correct the initial pair's poorly conditioned scale, and points triangulated against it while
            a late adjustment runs carried its distortion into the whole trajectory (the sample as a live stream,
            frames back to back: Sim(3) ATE 5.3 % of the path with every adjustment in the background, 0.39 % with
            the first two in the step, as with all of them in the step).
        prune_every: every this many keyframes, map points that no live track, window keyframe or stored
            relocalisation keyframe refers to are forgotten (nothing can use them again), so the map is bounded
            by the relocalisation database's keyframes instead of growing with the stream.
        live_init_views: with the bundle adjustment in the background, the initialisation's adjustment of the
            held frames uses at most this many of them (evenly spaced; the rest are posed by PnP), so the one
            step that initialises the map stays bounded however long the parallax took.
    """

    def __init__(self, K: np.ndarray, width: int, height: int, *, stride: int = 1, points: str = "dense",
                 max_features: int = 600, min_tracks: int = 200, keyframe_ratio: float = 0.75,
                 min_init_px: float | None = None, min_init_deg: float = 1.0, min_tri_deg: float = 1.0,
                 ba_window: int = 6, max_kf_gap: int = 8, min_inliers: int = 15, reproj_px: float = 2.0,
                 max_lost_frames: int = 3, max_pending: int = 60, ba_iterations: int = 20,
                 anchor_tracks: bool = False, soft_scale: bool = True, emit_updates: bool = True,
                 ba_outlier_px: float = 4.0, huber_px: float = 1.5, init_ba: bool = True,
                 ba_fix_newest: bool = False, calibrate_focal: bool = False, focal_keyframes: int = 40,
                 relocalise: bool = True, reloc: dict[str, Any] | None = None,
                 klt: dict[str, Any] | None = None, background_ba: str = "live", sync_keyframes: int = 2,
                 live_init_views: int = 8, prune_every: int = 16, focal_iterations: int = 20) -> None:
        if background_ba not in ("live", "always", "never"):
            raise ConfigError(f"monocular VO: background_ba must be 'live', 'always' or 'never', got {background_ba!r}")
        if int(live_init_views) < 2:
            raise ConfigError(f"monocular VO: live_init_views must be at least 2, got {live_init_views!r}")
        self.K = np.asarray(K, dtype=np.float64)
        self.width, self.height = int(width), int(height)
        self.stride = int(stride)
        self.points_mode = points
        self.max_features = int(max_features)
        self.min_tracks = int(min_tracks)
        self.keyframe_ratio = float(keyframe_ratio)
        self.min_init_px = float(min_init_px) if min_init_px else 0.02 * float(np.hypot(width, height))
        self.min_init_deg = float(min_init_deg)
        self.min_tri_deg = float(min_tri_deg)
        self.ba_window = max(2, int(ba_window))
        self.max_kf_gap = int(max_kf_gap)
        self.min_inliers = int(min_inliers)
        self.reproj_px = float(reproj_px)
        self.max_lost_frames = int(max_lost_frames)
        self.max_pending = int(max_pending)
        self.ba_iterations = int(ba_iterations)
        self.focal_iterations = int(focal_iterations)
        # 600 corners at least 7 px apart: measured on rendered rooms, more and denser corners keep the
        # scale better than the 400 / 8 px that suffice for RGB-D (see tests and `recon bench geometric`).
        # Four pyramid levels above the image: flow up to ~16x the window, for the frames a busy live stream
        # skips (with three, the bundled sample at every 12th frame lost tracking 71 times in 400 steps).
        self._klt_options = {"min_distance": 7, "levels": 4, **(klt or {})}
        self.anchor_tracks = bool(anchor_tracks)
        self.soft_scale = bool(soft_scale)
        self.emit_updates = bool(emit_updates)
        self.ba_outlier_px = float(ba_outlier_px)
        self.huber_px = float(huber_px)
        self.init_ba = bool(init_ba)
        self.ba_fix_newest = bool(ba_fix_newest)
        self.calibrate_focal = bool(calibrate_focal)
        self.focal_keyframes = int(focal_keyframes)
        self.focal_source = "assumed (not calibrated yet)" if self.calibrate_focal else "given"
        self.relocalise = bool(relocalise)
        # A failed relocalisation matches the frame against every stored keyframe: 2.0-3.4 s per attempt with
        # 200 keyframes, 0.6-0.8 s with 64, 0.15-0.3 s with 32 (640x480, load 7-10), and a live stream that
        # loses tracking pays it on every lost frame; the stored keyframes (and the map points they keep
        # alive) are also what a long session's memory grows to. So 32 unless `reloc` says otherwise.
        self._reloc_options = {"max_keyframes": 32, **(reloc or {})}
        self.relocalisations = 0
        self.background_ba = background_ba
        self.live_init_views = int(live_init_views)
        self.sync_keyframes = int(sync_keyframes)
        self.prune_every = max(1, int(prune_every))
        self.points_pruned = 0
        self._in_background = False  # the current frame's keyframe adjustment runs in the background
        self._ba_job: BundleJob | None = None
        self._ba_wanted = False  # a keyframe came while a job was running: adjust the window again after it
        self.background_adjustments = 0
        self.background_discarded = 0
        self._focal_refinements = 0
        self._focal_from_guess = False  # the focal search was not confident: the refinement starts at the guess
        self.updates_emitted = 0
        self.held_untracked = 0  # frames emitted untracked during initialisation (revised once it succeeds)
        self._warn = WarnOnce(logger)
        self._K_out = strided_K(self.K, self.stride)
        self.losses = 0
        self.reinitialisations = 0
        self.keyframe_count = 0
        self.emitted_guessed = 0
        self._reset_map(np.eye(4), scale_depth=None)
        self._lost_map: dict[str, Any] | None = None
        self.velocity = np.eye(4)
        self.T_world_last = np.eye(4)
        self.lost_in_row = 0

    # -- public -----------------------------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        """Counters for BackendStats.extra."""
        return {"state": self.state, "tracking_losses": self.losses, "reinitialisations": self.reinitialisations,
                "keyframes": self.keyframe_count, "map_points": len(self.points), "tracks": len(self._ids),
                "pending": len(self._pending), "guessed_poses": self.emitted_guessed,
                "pose_updates": self.updates_emitted,
                "held_untracked": self.held_untracked, "lost": self.lost_in_row > 0,
                "relocalisations": self.relocalisations,
                "background_adjustments": self.background_adjustments,
                "background_discarded": self.background_discarded, "points_pruned": self.points_pruned,
                "intrinsics": {"fx": float(self.K[0, 0]), "fy": float(self.K[1, 1]), "cx": float(self.K[0, 2]),
                               "cy": float(self.K[1, 2]), "source": self.focal_source}}

    def memory_bytes(self) -> int:
        """Rough bytes held: map points, keyframe observations, held frames and the last image."""
        obs = sum(len(kf.obs) for kf in self._kfs)
        held = sum(p.frame.image.nbytes for p in self._pending)
        revisable = sum(r.points_world.nbytes + r.depth.nbytes for r, _, _ in self._attached
                        if r.points_world is not None and r.depth is not None)
        anchors = sum(g.nbytes for g in self._anchor_grays.values())
        return 24 * len(self.points) + 40 * obs + held + revisable + anchors + self.width * self.height * 2

    def track(self, frame: Frame) -> list[FrameResult]:
        """Process one frame; returns its result (untracked while initialising), plus any revisions."""
        self._in_background = self.background_ba == "always" or (
            self.background_ba == "live" and bool(frame.meta.get("live", False)))
        updates = []
        if self._ba_job is not None and (self._ba_job.ready() or not self._in_background):
            updates = self._finish_background_ba()
        gray = to_gray(frame.image)
        if self.state == "init":
            return updates + self._step_init(frame, gray)
        return updates + self._step_track(frame, gray)

    def quiesce(self) -> None:
        """Wait for the background bundle adjustment (before a checkpoint: its finished job is plain data and
        is applied by the next step, of this tracker or of one restored from the checkpoint)."""
        if self._ba_job is not None:
            self._ba_job.wait()

    def flush(self) -> list[FrameResult]:
        """End of stream: held frames that never got a pose (already emitted untracked, or now with a guess)."""
        out = self._finish_background_ba() if self._ba_job is not None else []
        return out + self._flush_held()

    def _flush_held(self) -> list[FrameResult]:
        held = [self._drop_held(p) for p in self._pending]
        self._pending = []
        return [r for r in held if r is not None]

    @property
    def _emit_held(self) -> bool:
        """Emit frames at once while initialising and revise them later (needs revisions, `emit_updates`)."""
        return self.emit_updates

    def _drop_held(self, p: _Pending) -> FrameResult | None:
        """A held frame leaves without a pose: counted as guessed; emitted now unless it was already."""
        if self._emit_held:
            self.emitted_guessed += 1
            return None
        return self._emit_guess(p.frame, self._T_world_ref)

    def _held_result(self, frame: Frame) -> list[FrameResult]:
        """A frame kept for the initialisation: its untracked result now, or nothing (held until posed)."""
        if not self._emit_held:
            return []
        self.held_untracked += 1
        return [self._result(frame, self._T_world_ref, np.zeros(0, np.int64), np.zeros((0, 2)), ok=False)]

    # -- map state ----------------------------------------------------------------------------------------------

    def _reset_map(self, T_world_ref: np.ndarray, scale_depth: float | None) -> None:
        """Drop the map; the next map starts at pose `T_world_ref` with median depth `scale_depth` (or 1)."""
        self.state = "init"
        self.klt = KltTracker(max_corners=self.max_features, **self._klt_options)
        self.points: dict[int, np.ndarray] = {}
        self._kfs: list[_Keyframe] = []
        self._ids = np.zeros(0, np.int64)
        self._pts = np.zeros((0, 2), np.float32)
        self._anchor_key = np.zeros(0, np.int64)  # image each track was detected in (for anchored refinement)
        self._anchor_pts = np.zeros((0, 2), np.float32)
        self._anchor_grays: dict[int, np.ndarray] = {}
        self._prev_gray: np.ndarray | None = None
        self._ref_gray: np.ndarray | None = None
        self._ref_pts = np.zeros((0, 2), np.float32)
        self._pending: list[_Pending] = []
        self._T_world_ref = T_world_ref.copy()
        self._scale_depth = scale_depth
        self._frames_since_kf = 0
        self._kf_map_tracks = 0
        self._map_keyframes = 0  # keyframes added to this map after its initial pair
        self._attached: list[tuple[FrameResult, _Keyframe, np.ndarray]] = []  # result, its keyframe, T_kf_frame
        self._init_poses = {}
        self._db = DescriptorDatabase(**self._reloc_options)

    # -- initialisation -----------------------------------------------------------------------------------------

    def _step_init(self, frame: Frame, gray: np.ndarray) -> list[FrameResult]:
        out: list[FrameResult] = []
        if self._lost_map is not None:
            lost = self._lost_map
            found = lost["db"].relocalise(gray, lost["points"], self.K)
            if found is not None:
                # Back in the old map: the frames held for the new one have no pose in it.
                out = self._flush_held()
                self.points, self._kfs, self._db, self.klt = lost["points"], lost["kfs"], lost["db"], lost["klt"]
                self._lost_map = None
                self.state = "track"
                return out + self._relocalised(frame, gray, found)
        if self._ref_gray is None:
            pts, ids = self.klt.detect(gray)
            if len(pts) < 60:  # blank or textureless: cannot start here
                self._T_world_ref = self._predict()
                return [self._emit_guess(frame, self._T_world_ref)]
            self._ref_gray, self._prev_gray = gray, gray
            self._ref_pts, self._pts, self._ids = pts, pts.copy(), ids
            self._anchor_grays = {}
            self._anchor_key, self._anchor_pts = self._anchor_key[:0], self._anchor_pts[:0]
            self._add_anchor(gray, pts)
            self._pending = [_Pending(frame, ids, pts)]
            self.T_world_last = self._T_world_ref.copy()
            return out + self._held_result(frame)
        pts, ok = self._klt_track(gray)
        if ok.sum() < 0.4 * len(self._ref_pts) or ok.sum() < 50:
            # The reference is no longer visible (or this frame is garbage): emit what is held, start again.
            out = self._flush_held()
            self._ref_gray = None
            return out + self._step_init(frame, gray)
        self._ref_pts = self._ref_pts[ok]
        self._keep_tracks(ok, pts)
        self._prev_gray = gray
        self._pending.append(_Pending(frame, self._ids.copy(), self._pts.copy()))
        flow = np.median(np.linalg.norm(self._pts - self._ref_pts, axis=1))
        if flow >= self.min_init_px and self._try_initialise(gray):
            return out + self._emit_pending()
        out += self._held_result(frame)
        while len(self._pending) > self.max_pending:
            dropped = self._drop_held(self._pending.pop(0))
            out += [] if dropped is None else [dropped]
        return out

    def _try_initialise(self, gray: np.ndarray) -> bool:
        """Two-view map from the reference and the current frame; False when the parallax is too small."""
        if self.calibrate_focal and self._focal_refinements == 0:
            self._search_focal()
        p0, p1 = self._ref_pts.astype(np.float64), self._pts.astype(np.float64)
        model = essential_ransac(p0, p1, self.K, 1.0)
        if model is None:
            return False
        E, mask = model
        _, R, t, mask = cv2.recoverPose(E, p0, p1, self.K, mask=mask.astype(np.uint8).reshape(-1, 1))
        inl = mask.reshape(-1) > 0
        if inl.sum() < 50:
            return False
        T_cur_ref = np.eye(4)
        T_cur_ref[:3, :3], T_cur_ref[:3, 3] = R, t.reshape(3)
        X_ref, good = self._triangulate(np.eye(4), T_cur_ref, p0, p1)
        good &= inl
        if good.sum() < 40:
            return False
        rays0 = X_ref[good] / np.linalg.norm(X_ref[good], axis=1, keepdims=True)
        c1 = -R.T @ t.reshape(3)
        d1 = X_ref[good] - c1
        rays1 = d1 / np.linalg.norm(d1, axis=1, keepdims=True)
        angle = np.degrees(np.arccos(np.clip(np.sum(rays0 * rays1, axis=1), -1, 1)))
        if np.median(angle) < self.min_init_deg:
            return False
        median_depth = float(np.median(X_ref[good, 2]))
        target = self._scale_depth or 1.0
        s = target / median_depth
        T_cur_ref[:3, 3] *= s
        X_ref = X_ref * s
        self._init_poses: dict[int, np.ndarray] = {}
        if self.init_ba and len(self._pending) >= 3:
            T_cur_ref = self._refine_initial_views(T_cur_ref, X_ref, good)
        X_world = X_ref @ self._T_world_ref[:3, :3].T + self._T_world_ref[:3, 3]
        T_ref_world = inv_se3(self._T_world_ref)
        kf0 = _Keyframe(self.keyframe_count, T_ref_world)
        kf1 = _Keyframe(self.keyframe_count + 1, T_cur_ref @ T_ref_world)
        self.keyframe_count += 2
        keep = inl  # outliers of the epipolar geometry are dropped
        for i in np.flatnonzero(keep):
            tid = int(self._ids[i])
            kf0.obs[tid] = self._ref_pts[i].copy()
            kf1.obs[tid] = self._pts[i].copy()
            if good[i]:
                self.points[tid] = X_world[i]
        self._keep_tracks(keep)
        self._kfs = [kf0, kf1]
        self.state = "track"
        self._frames_since_kf = 0
        self._describe(self._ref_gray, kf0)
        self._describe(gray, kf1)
        self._replenish(gray, kf1)
        self._kf_map_tracks = self._n_map_tracks()
        self._lost_map = None  # the new map replaces the lost one
        logger.info("monocular VO initialised: %d map points, median parallax %.1f deg over %d frames",
                    len(self.points), float(np.median(angle)), len(self._pending))
        return True

    def _search_focal(self) -> None:
        """Focal length from the held frames (pairs of the reference with later frames), when well defined."""
        from recon.backends.geometric.selfcalib import estimate_focal

        ref = {int(t): uv for t, uv in zip(self._pending[0].ids, self._pending[0].pts, strict=True)}
        n = len(self._pending)
        pairs = []
        for k in sorted({max(1, n // 3), max(1, n // 2), max(1, 2 * n // 3), max(1, 5 * n // 6), n - 1}):
            p = self._pending[k]
            common = [(ref[int(t)], uv) for t, uv in zip(p.ids, p.pts, strict=True) if int(t) in ref]
            if common:
                pairs.append((np.array([c[0] for c in common]), np.array([c[1] for c in common])))
        est = estimate_focal(pairs, self.width, self.height)
        self._focal_from_guess = not (est.f is not None and est.confident)
        if not self._focal_from_guess:
            self._set_focal(est.f)
            self.focal_source = "self-calibrated (essential-matrix focal search)"
            logger.info("monocular VO: focal length self-calibrated to %.1f px from %d image pairs (a guess until "
                        "the bundle adjustment refines it)", est.f, est.pairs)
        else:
            logger.info("monocular VO: the first frames do not determine the focal length (%s); starting from "
                        "f = %.1f px and refining it in the bundle adjustment",
                        "no usable pairs" if est.f is None else f"search found {est.f:.1f} px, not confident",
                        self.K[0, 0])

    def _set_focal(self, f: float) -> None:
        self.K = self.K.copy()
        self.K[0, 0] = self.K[1, 1] = float(f)
        self._K_out = strided_K(self.K, self.stride)

    def _refining_focal(self) -> bool:
        return self.calibrate_focal and self._focal_refinements < self.focal_keyframes

    def _ba_evaluations(self) -> int:
        """The adjustment's evaluation limit: `focal_iterations` while it refines a focal length that starts from
        the 0.8 x max(w, h) guess (the focal search was not confident). Every projection is then off, the
        trust-region steps are short, and with 20 evaluations each adjustment stopped on the limit: 40 of them
        left f 10 % off (docs/benchmarks.md, monocular section). From a confident search 20 are enough."""
        slow = self._refining_focal() and self._focal_from_guess
        return max(self.ba_iterations, self.focal_iterations) if slow else self.ba_iterations

    def _apply_focal_scale(self, scale: float) -> None:
        """Take the focal length the bundle adjustment found; log it once it is final."""
        if not self._refining_focal():
            return
        self._focal_refinements += 1
        self._set_focal(self.K[0, 0] * scale)
        self.focal_source = "self-calibrated (bundle adjustment)"
        if not self._refining_focal():
            logger.info("monocular VO: focal length self-calibrated to %.1f px over %d bundle adjustments (no "
                        "calibration given: this is an estimate)", self.K[0, 0], self._focal_refinements)

    def _refine_initial_views(self, T_cur_ref: np.ndarray, X_ref: np.ndarray, good: np.ndarray) -> np.ndarray:
        """Bundle-adjust the two-view map with every held frame between the two views (in place on X_ref).

        Two views a few frames apart leave depth and translation direction poorly conditioned; the frames in
        between see the same tracks and turn it into a small multi-view reconstruction. Returns the refined
        T_cur_ref and keeps the refined pose of each held frame (relative to the reference) for emission.
        """
        index = {int(t): i for i, t in enumerate(self._ids) if good[i]}
        cams = [np.eye(4)]
        frames = [0]
        last = len(self._pending) - 1
        between = range(1, last)
        if self._in_background and len(between) > self.live_init_views - 2:
            # Live: a bounded adjustment (evenly spaced held frames); the others are posed by PnP when emitted.
            between = sorted({int(k) for k in np.linspace(1, last - 1, self.live_init_views - 2).round()})
        for k in between:
            p = self._pending[k]
            rows = [(index[int(t)], uv) for t, uv in zip(p.ids, p.pts, strict=True) if int(t) in index]
            if len(rows) < self.min_inliers:
                continue
            res = solve_pnp(X_ref[[r[0] for r in rows]], np.stack([r[1] for r in rows]), self.K, cams[-1],
                            reproj_px=self.reproj_px, min_inliers=self.min_inliers)
            if res is not None:
                cams.append(res[0])
                frames.append(k)
        cams.append(T_cur_ref)
        frames.append(last)
        pids = sorted(set(index.values()))
        col = {i: j for j, i in enumerate(pids)}
        obs_cam, obs_pt, obs_uv = [], [], []
        for c, k in enumerate(frames):
            p = self._pending[k]
            for t, uv in zip(p.ids, p.pts, strict=True):
                i = index.get(int(t))
                if i is not None:
                    obs_cam.append(c)
                    obs_pt.append(col[i])
                    obs_uv.append(uv)
        fixed = np.zeros(len(cams), bool)
        fixed[0] = True
        T, X, _, fs = bundle_adjust(np.stack(cams), fixed, X_ref[pids], np.array(obs_cam), np.array(obs_pt),
                                    np.asarray(obs_uv, np.float64), self.K, max_nfev=self._ba_evaluations(),
                                    huber_px=self.huber_px, scale_pair=(0, len(cams) - 1),
                                    refine_focal=self._refining_focal())
        self._apply_focal_scale(fs)
        X_ref[pids] = X
        self._init_poses = {k: T[c] for c, k in enumerate(frames)}
        return T[-1]

    def _emit_pending(self) -> list[FrameResult]:
        """Pose the held frames by PnP against the new map; emit them in order (as revisions of their untracked
        results when those were emitted; the current frame, the last, is new)."""
        out = []
        T_guess_cw = self._kfs[0].T_cw
        last = len(self._pending) - 1
        for k, p in enumerate(self._pending):
            if k == 0:
                T_cw = self._kfs[0].T_cw
            elif k == last:
                T_cw = self._kfs[-1].T_cw
            elif k in self._init_poses:
                T_cw = self._init_poses[k] @ self._kfs[0].T_cw
            else:
                T_cw = self._pnp(p.ids, p.pts, T_guess_cw)
                if T_cw is None:
                    T_cw = T_guess_cw
            T_guess_cw = T_cw
            out.append(self._result(p.frame, inv_se3(T_cw), p.ids, p.pts))
            if k < last and self._emit_held:
                out[-1] = replace(out[-1], is_update=True)
                self.updates_emitted += 1
            self._attach(out[-1], self._kfs[-1] if k == last else self._kfs[0])
        T_prev = inv_se3(self._kfs[-2].T_cw) if last < 1 else inv_se3(self._pnp_or(self._pending[-2], T_guess_cw))
        self.T_world_last = inv_se3(self._kfs[-1].T_cw)
        self.velocity = inv_se3(T_prev) @ self.T_world_last
        self._pending = []
        self.lost_in_row = 0
        return out

    def _pnp_or(self, p: _Pending, guess_cw: np.ndarray) -> np.ndarray:
        T = self._pnp(p.ids, p.pts, guess_cw)
        return guess_cw if T is None else T

    # -- tracking ----------------------------------------------------------------------------------------------

    def _step_track(self, frame: Frame, gray: np.ndarray) -> list[FrameResult]:
        guess = self.T_world_last @ self.velocity
        pts, ok = self._klt_track(gray)
        ids = self._ids[ok]
        pts = pts[ok]
        sel = np.flatnonzero(ok)
        T_cw = None
        if len(ids):
            has = np.array([int(i) in self.points for i in ids])
            if has.sum() >= self.min_inliers:
                X = np.stack([self.points[int(i)] for i in ids[has]])
                res = solve_pnp(X, pts[has], self.K, inv_se3(guess), reproj_px=self.reproj_px,
                                min_inliers=self.min_inliers)
                if res is not None:
                    T_cw, inl = res
                    drop = np.flatnonzero(has)[~inl]
                    keep = np.ones(len(ids), bool)
                    keep[drop] = False
                    for tid in ids[drop]:
                        self.points.pop(int(tid), None)
                    ids, pts, sel = ids[keep], pts[keep], sel[keep]
        if T_cw is None and self.relocalise:
            found = self._db.relocalise(gray, self.points, self.K, inv_se3(guess))
            if found is not None:
                return self._relocalised(frame, gray, found)
        if T_cw is None:
            return [self._lost(frame, guess)]
        T_world_cur = inv_se3(T_cw)
        self.velocity = inv_se3(self.T_world_last) @ T_world_cur
        self.T_world_last = T_world_cur
        self.lost_in_row = 0
        mask = np.zeros(len(self._ids), bool)
        mask[sel] = True
        full = self._pts.copy()
        full[sel] = pts
        self._keep_tracks(mask, full)
        self._prev_gray = gray
        self._frames_since_kf += 1
        n_map = self._n_map_tracks()
        updates: list[FrameResult] = []
        if (n_map < self.keyframe_ratio * self._kf_map_tracks or len(ids) < self.min_tracks
                or self._frames_since_kf >= self.max_kf_gap):
            T_cw = self._add_keyframe(gray, T_cw)
            self.T_world_last = inv_se3(T_cw)
            self.velocity = inv_se3(T_world_cur) @ self.T_world_last @ self.velocity
            updates = self._revise_attached()
        result = self._result(frame, self.T_world_last, self._ids, self._pts)
        self._attach(result, self._kfs[-1])
        return updates + [result]

    def _relocalised(self, frame: Frame, gray: np.ndarray, found: Any) -> list[FrameResult]:
        """Continue from a descriptor-matched pose: its matches become the tracks and the frame a keyframe."""
        self.relocalisations += 1
        if self.lost_in_row:
            logger.info("monocular VO: relocalised at %s/%d against keyframe %d (%d matched map points) after %d "
                        "lost frames", frame.stream_id, frame.seq, found.keyframe, len(found.ids), self.lost_in_row)
        self.lost_in_row = 0
        self._ids = found.ids.astype(np.int64)
        self._pts = found.pts.astype(np.float32)
        self._anchor_grays = {}
        self._anchor_key, self._anchor_pts = self._anchor_key[:0], self._anchor_pts[:0]
        self._add_anchor(gray, self._pts)
        self._prev_gray = gray
        T_cw = self._add_keyframe(gray, found.T_cw)
        self.T_world_last = inv_se3(T_cw)
        self.velocity = np.eye(4)  # the motion since the last tracked frame is unknown
        updates = self._revise_attached()
        result = self._result(frame, self.T_world_last, self._ids, self._pts)
        self._attach(result, self._kfs[-1])
        return updates + [result]

    def _attach(self, result: FrameResult, kf: _Keyframe) -> None:
        """Remember an emitted frame relative to a keyframe, so bundle adjustment can revise its pose."""
        if self.emit_updates:
            self._attached.append((result, kf, kf.T_cw @ result.T_world_cam))

    def _revise_attached(self) -> list[FrameResult]:
        """Updated results (`is_update`) for emitted frames whose keyframe moved in the bundle adjustment."""
        window = {id(kf) for kf in self._kfs}
        self._attached = [a for a in self._attached if id(a[1]) in window]
        depth = self._median_depth() or 1.0
        out = []
        for i, (old, kf, T_kf_frame) in enumerate(self._attached):
            T_new = inv_se3(kf.T_cw) @ T_kf_frame
            delta = T_new @ inv_se3(old.T_world_cam)  # maps the old world placement onto the new one
            if np.linalg.norm(delta[:3, 3]) < 1e-3 * depth and rotation_deg(delta) < 0.05:
                continue
            pts = None
            if old.points_world is not None:
                pts = (old.points_world.astype(np.float64) @ delta[:3, :3].T + delta[:3, 3]).astype(np.float32)
                snapshot.freeze(pts)
            new = FrameResult(old.stream_id, old.seq, old.t_ns, T_new, old.K, depth=old.depth,
                              confidence=old.confidence, points_world=pts, metric=False, image=old.image,
                              is_update=True)
            self._attached[i] = (new, kf, T_kf_frame)
            out.append(new)
        self.updates_emitted += len(out)
        return out

    def _klt_track(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame-to-frame KLT, then (with `anchor_tracks`) re-measured against each track's first image."""
        pts, ok = self.klt.track(self._prev_gray, gray, self._pts)
        if self.anchor_tracks:
            for key in np.unique(self._anchor_key[ok]):
                idx = np.flatnonzero(ok & (self._anchor_key == key))
                pts[idx], ok[idx] = self.klt.refine(self._anchor_grays[int(key)], gray, self._anchor_pts[idx],
                                                    pts[idx])
        return pts, ok

    def _add_anchor(self, gray: np.ndarray, pts: np.ndarray) -> None:
        key = len(self._anchor_grays) and max(self._anchor_grays) + 1
        self._anchor_grays[key] = gray
        self._anchor_key = np.concatenate([self._anchor_key, np.full(len(pts), key, np.int64)])
        self._anchor_pts = np.concatenate([self._anchor_pts, pts]).astype(np.float32)

    def _keep_tracks(self, mask: np.ndarray, pts: np.ndarray | None = None) -> None:
        """Keep the live tracks selected by `mask` (moved to `pts` if given); forget unused anchor images."""
        self._ids = self._ids[mask]
        self._pts = (self._pts if pts is None else pts)[mask].astype(np.float32)
        self._anchor_key, self._anchor_pts = self._anchor_key[mask], self._anchor_pts[mask]
        live = set(np.unique(self._anchor_key).tolist())
        self._anchor_grays = {k: g for k, g in self._anchor_grays.items() if k in live}

    def _n_map_tracks(self) -> int:
        return int(sum(1 for i in self._ids if int(i) in self.points))

    def _pnp(self, ids: np.ndarray, pts: np.ndarray, guess_cw: np.ndarray) -> np.ndarray | None:
        has = np.array([int(i) in self.points for i in ids], bool)
        if has.sum() < self.min_inliers:
            return None
        X = np.stack([self.points[int(i)] for i in ids[has]])
        res = solve_pnp(X, pts[has], self.K, guess_cw, reproj_px=self.reproj_px, min_inliers=self.min_inliers)
        return None if res is None else res[0]

    def _lost(self, frame: Frame, guess: np.ndarray) -> FrameResult:
        """Count a loss; keep the last good frame to track from; re-initialise after too many in a row."""
        self.losses += 1
        self.lost_in_row += 1
        self._warn("tracking_lost", "monocular VO lost tracking at %s/%d; continuing from a constant-velocity "
                   "guess", frame.stream_id, frame.seq)
        if self.lost_in_row <= self.max_lost_frames:
            self.T_world_last = guess
        else:
            self.velocity = np.eye(4)
        if self.lost_in_row > self.max_lost_frames and self.state == "track":
            self.reinitialisations += 1
            logger.info("monocular VO: re-initialising after %d lost frames", self.lost_in_row)
            depth = self._median_depth()
            lost_map = {"points": self.points, "kfs": self._kfs, "db": self._db, "klt": self.klt} \
                if self.relocalise else None
            self._reset_map(self.T_world_last, scale_depth=depth)
            self._lost_map = lost_map  # tried by relocalisation until the new map is initialised
        self.emitted_guessed += 1
        return self._result(frame, self.T_world_last, np.zeros(0, np.int64), np.zeros((0, 2)), ok=False)

    def _median_depth(self) -> float | None:
        kf = self._kfs[-1] if self._kfs else None
        if kf is None:
            return None
        X = [self.points[i] for i in kf.obs if i in self.points]
        if len(X) < 10:
            return None
        z = (np.stack(X) @ kf.T_cw[:3, :3].T + kf.T_cw[:3, 3])[:, 2]
        return float(np.median(z[z > 0])) if np.any(z > 0) else None

    def _predict(self) -> np.ndarray:
        if self.lost_in_row <= self.max_lost_frames:
            self.T_world_last = self.T_world_last @ self.velocity
        return self.T_world_last

    # -- keyframes ---------------------------------------------------------------------------------------------

    def _add_keyframe(self, gray: np.ndarray, T_cw: np.ndarray) -> np.ndarray:
        """New keyframe: triangulate, bundle-adjust the window, replenish corners; returns the refined T_cw."""
        obs = {int(i): p.copy() for i, p in zip(self._ids, self._pts, strict=True)}
        kf = _Keyframe(self.keyframe_count, T_cw.copy(), obs)
        self.keyframe_count += 1
        self._map_keyframes += 1
        self._kfs.append(kf)
        self._kfs = self._kfs[-self.ba_window:]
        n_before = len(self.points)
        self._triangulate_new(kf)
        n_new = len(self.points) - n_before
        c_before = inv_se3(kf.T_cw)[:3, 3]
        self._local_ba()
        logger.debug("keyframe %d: %d tracks, %d new points, %d map points, moved %.4f by the adjustment",
                     kf.index, len(kf.obs), n_new, len(self.points), np.linalg.norm(inv_se3(kf.T_cw)[:3, 3] - c_before))
        self._describe(gray, kf)
        self._replenish(gray, kf)
        if self.keyframe_count % self.prune_every == 0:
            self._prune_points()
        self._frames_since_kf = 0
        self._kf_map_tracks = self._n_map_tracks()
        return kf.T_cw

    def _prune_points(self) -> None:
        """Forget map points nothing refers to: not tracked, not seen by a window keyframe, not described for
        relocalisation (tracking, triangulation, the adjustment and relocalisation never read them again)."""
        keep = {int(t) for t in self._ids}
        for kf in self._kfs:
            keep.update(kf.obs)
        for entry in self._db.entries:
            keep.update(entry.ids.tolist())
        drop = [t for t in self.points if t not in keep]
        for t in drop:
            del self.points[t]
        self.points_pruned += len(drop)

    def _describe(self, gray: np.ndarray, kf: _Keyframe) -> None:
        """Store the keyframe's ORB descriptors at its map points, for relocalisation."""
        if not self.relocalise:
            return
        ids = np.array([t for t in kf.obs if t in self.points], np.int64)
        if len(ids):
            self._db.add(kf.index, gray, ids, np.stack([kf.obs[int(t)] for t in ids]))

    def _triangulate_new(self, kf: _Keyframe) -> None:
        """Points for tracks without one, against the oldest window keyframe that saw them."""
        cand = [i for i in kf.obs if i not in self.points]
        by_kf: dict[int, list[int]] = {}
        for tid in cand:
            for k, old in enumerate(self._kfs[:-1]):
                if tid in old.obs:
                    by_kf.setdefault(k, []).append(tid)
                    break
        for k, tids in by_kf.items():
            old = self._kfs[k]
            p0 = np.stack([old.obs[t] for t in tids]).astype(np.float64)
            p1 = np.stack([kf.obs[t] for t in tids]).astype(np.float64)
            X, good = self._triangulate(old.T_cw, kf.T_cw, p0, p1)
            c0, c1 = inv_se3(old.T_cw)[:3, 3], inv_se3(kf.T_cw)[:3, 3]
            r0, r1 = X - c0, X - c1
            cosang = np.sum(r0 * r1, 1) / (np.linalg.norm(r0, axis=1) * np.linalg.norm(r1, axis=1) + 1e-12)
            good &= np.degrees(np.arccos(np.clip(cosang, -1, 1))) >= self.min_tri_deg
            for t, x, g in zip(tids, X, good, strict=True):
                if g:
                    self.points[t] = x

    def _triangulate(self, T0_cw: np.ndarray, T1_cw: np.ndarray, p0: np.ndarray, p1: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """World points from two views, and a mask of those in front of both with small reprojection error."""
        P0 = self.K @ T0_cw[:3]
        P1 = self.K @ T1_cw[:3]
        Xh = cv2.triangulatePoints(P0, P1, p0.T.astype(np.float64), p1.T.astype(np.float64))
        w = Xh[3]
        good = np.abs(w) > 1e-9
        X = (Xh[:3] / np.where(good, w, 1.0)).T
        for T, p in ((T0_cw, p0), (T1_cw, p1)):
            Xc = X @ T[:3, :3].T + T[:3, 3]
            z = Xc[:, 2]
            good &= z > 1e-6
            proj = Xc[:, :2] / np.where(z > 1e-6, z, 1.0)[:, None] * [self.K[0, 0], self.K[1, 1]] + self.K[:2, 2]
            good &= np.linalg.norm(proj - p, axis=1) < self.reproj_px
        return X, good

    def _local_ba(self) -> None:
        """Bundle-adjust the window (in the step, or on a background thread for live frames); the oldest
        keyframe stays fixed (gauge) and the scale is held softly (see `bundle_adjust`'s `scale_pair`)."""
        background = self._in_background and self._map_keyframes > self.sync_keyframes
        if background and self._ba_job is not None:
            self._ba_wanted = True  # one job at a time; the window is adjusted again once it is applied
            return
        problem = self._ba_problem()
        if problem is None:
            return
        kfs, pids, args, options = problem
        if background:
            self._ba_wanted = False
            self._ba_job = BundleJob(self.points, kfs, args[0].copy(), pids, set(self.points), args[4], args,
                                     options).start()
            return
        T, X, err, fs = bundle_adjust(*args, **options)
        self._apply_ba(kfs, pids, args[4], T, X, err, fs)

    def _ba_problem(self) -> tuple[list[_Keyframe], list[int], tuple[Any, ...], dict[str, Any]] | None:
        """The window's adjustment: keyframes, point ids and the arguments of `bundle_adjust` (copies)."""
        kfs = list(self._kfs)
        if len(kfs) < 3:
            return None
        count: dict[int, int] = {}
        for kf in kfs:
            for tid in kf.obs:
                if tid in self.points:
                    count[tid] = count.get(tid, 0) + 1
        pids = [t for t, c in count.items() if c >= 2]
        if len(pids) < 20:
            return None
        col = {t: j for j, t in enumerate(pids)}
        obs_cam, obs_pt, obs_uv = [], [], []
        for c, kf in enumerate(kfs):
            for tid, uv in kf.obs.items():
                j = col.get(tid)
                if j is not None:
                    obs_cam.append(c)
                    obs_pt.append(j)
                    obs_uv.append(uv)
        # Gauge: the oldest keyframe is fixed; the scale is held by the distance from it to the newest (the
        # longest, best-measured baseline) rather than by a second fixed keyframe, so a poorly conditioned
        # early pair (e.g. the initialisation) can still be corrected while it is in the window.
        fixed = np.zeros(len(kfs), bool)
        fixed[0] = True
        if self.ba_fix_newest:
            fixed[-1] = True
        elif not self.soft_scale:
            fixed[1] = True
        args = (np.stack([kf.T_cw for kf in kfs]), fixed, np.stack([self.points[t] for t in pids]),
                np.array(obs_cam), np.array(obs_pt), np.asarray(obs_uv, np.float64), self.K.copy())
        options = {"max_nfev": self._ba_evaluations(), "huber_px": self.huber_px,
                   "refine_focal": self._refining_focal(),
                   "scale_pair": (0, len(kfs) - 1) if self.soft_scale and not self.ba_fix_newest else None}
        return kfs, pids, args, options

    def _apply_ba(self, kfs: list[_Keyframe], pids: list[int], obs_pt: np.ndarray, T: np.ndarray, X: np.ndarray,
                  err: np.ndarray, fs: float) -> None:
        """Take an adjustment's poses and points; drop the points with a large residual after it."""
        self._apply_focal_scale(fs)
        for kf, Tc in zip(kfs, T, strict=True):
            kf.T_cw = Tc
        bad = set()
        for m in np.flatnonzero(err > self.ba_outlier_px):
            bad.add(pids[obs_pt[m]])
        for t, x in zip(pids, X, strict=True):
            if t in bad:
                self.points.pop(t, None)
            elif t in self.points:  # (a background job's point may have been dropped meanwhile)
                self.points[t] = x

    def _finish_background_ba(self) -> list[FrameResult]:
        """Apply the background adjustment (waiting for it if needed); revisions of the frames it moved.

        Keyframes added and points triangulated since it started were placed against the unrefined map: they,
        and the current pose, move rigidly with the newest adjusted keyframe. Then the next adjustment starts
        if keyframes came meanwhile."""
        job, self._ba_job = self._ba_job, None
        assert job is not None
        job.wait()
        if job.points is not self.points:  # the map was dropped (re-initialisation) while it ran
            self.background_discarded += 1
            return []
        if job.error is not None or job.T is None:
            self.background_discarded += 1
            self._warn("background_ba", "monocular VO: a background bundle adjustment failed (%s); the map keeps "
                       "its unrefined poses", job.error)
            return []
        self.background_adjustments += 1
        T_old_cw = job.T_before[-1]
        self._apply_ba(job.kfs, job.pids, job.obs_pt, job.T, job.X, job.err, job.focal_scale)
        # D maps the old world placement of the newest adjusted keyframe onto its new one.
        D = inv_se3(job.kfs[-1].T_cw) @ T_old_cw
        adjusted = {id(kf) for kf in job.kfs}
        for kf in self._kfs:
            if id(kf) not in adjusted:
                kf.T_cw = kf.T_cw @ inv_se3(D)
        for t, x in self.points.items():
            if t not in job.known:
                self.points[t] = D[:3, :3] @ x + D[:3, 3]
        self.T_world_last = D @ self.T_world_last
        self._kf_map_tracks = min(self._kf_map_tracks, self._n_map_tracks())
        updates = self._revise_attached()
        if self._ba_wanted and self.state == "track" and self._in_background:
            self._local_ba()
        return updates

    def _replenish(self, gray: np.ndarray, kf: _Keyframe) -> None:
        """Detect corners away from live tracks so the next keyframes have something to triangulate."""
        need = self.max_features - len(self._ids)
        if need <= 20:
            return
        pts, ids = self.klt.detect(gray, self._pts, need)
        for i, p in zip(ids, pts, strict=True):
            kf.obs[int(i)] = p.copy()
        self._ids = np.concatenate([self._ids, ids])
        self._pts = np.concatenate([self._pts, pts]).astype(np.float32)
        self._add_anchor(gray, pts)

    # -- results -----------------------------------------------------------------------------------------------

    def _emit_guess(self, frame: Frame, T_world_cam: np.ndarray) -> FrameResult:
        self.emitted_guessed += 1
        return self._result(frame, T_world_cam, np.zeros(0, np.int64), np.zeros((0, 2)), ok=False)

    def _result(self, frame: Frame, T_world_cam: np.ndarray, ids: np.ndarray, pts: np.ndarray,
                ok: bool = True) -> FrameResult:
        """FrameResult with a point map from the map points tracked in this frame."""
        s = self.stride
        h, w = (self.height + s - 1) // s, (self.width + s - 1) // s
        depth = np.zeros((h, w), np.float32)
        conf = np.zeros((h, w), np.float32)
        if ok and len(ids):
            has = np.array([int(i) in self.points for i in ids], bool)
            if has.sum() >= 3:
                X = np.stack([self.points[int(i)] for i in ids[has]])
                T_cw = inv_se3(T_world_cam)
                z = (X @ T_cw[:3, :3].T + T_cw[:3, 3])[:, 2]
                uv = pts[has] / s
                front = z > 0
                depth, conf = _point_depths(uv[front], z[front], h, w, self.points_mode)
        pts_world, valid = depth_point_map(depth, self._K_out, T_world_cam)
        conf = (conf * valid).astype(np.float32)
        image = np.ascontiguousarray(frame.image[::s, ::s])
        # Kept for revisions (`_attach`) and in snapshots: frozen, so a snapshot holds them without a copy. The
        # frame's own image (stride 1) belongs to the caller and is not frozen.
        snapshot.freeze(depth, conf, pts_world, None if image is frame.image else image)
        return FrameResult(frame.stream_id, frame.seq, frame.t_ns, T_world_cam, self._K_out, depth=depth,
                           confidence=conf, points_world=pts_world, metric=False, image=image, tracked=ok)


def _point_depths(uv_n2: np.ndarray, z_n: np.ndarray, h: int, w: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Depth and confidence grids (h x w) from sparse pixel depths: linear over a Delaunay mesh, or sparse.

    Dense: each Delaunay triangle is rasterised with its index (cv2.fillConvexPoly), then every covered pixel
    evaluates its triangle's plane z = a u + b v + c. That is ~50x faster than scipy's LinearNDInterpolator
    point location on a full grid.
    """
    depth = np.zeros((h, w), np.float32)
    conf = np.zeros((h, w), np.float32)
    if mode == "dense" and len(z_n) >= 4:
        from scipy.spatial import Delaunay, QhullError

        try:
            tri = Delaunay(uv_n2)
        except (QhullError, ValueError):
            tri = None  # degenerate (collinear) pixels: fall back to the sparse map
        if tri is not None and len(tri.simplices):
            simplices = tri.simplices
            A = np.concatenate([uv_n2[simplices], np.ones((len(simplices), 3, 1))], axis=2)
            det = np.linalg.det(A)
            ok = np.abs(det) > 1e-6
            coef = np.zeros((len(simplices), 3))
            coef[ok] = np.linalg.solve(A[ok], z_n[simplices[ok]][..., None])[..., 0]
            index = np.zeros((h, w), np.int32)
            corners = np.round(uv_n2[simplices]).astype(np.int32)
            for k in np.flatnonzero(ok):
                cv2.fillConvexPoly(index, corners[k], int(k) + 1)
            v, u = np.nonzero(index)
            c = coef[index[v, u] - 1]
            z = c[:, 0] * u + c[:, 1] * v + c[:, 2]
            good = z > 0
            depth[v[good], u[good]] = z[good]
            conf[v[good], u[good]] = 1.0
            return depth, conf
    iu = np.clip(np.round(uv_n2[:, 0]).astype(int), 0, w - 1)
    iv = np.clip(np.round(uv_n2[:, 1]).astype(int), 0, h - 1)
    depth[iv, iu] = z_n
    conf[iv, iu] = 1.0
    return depth, conf
