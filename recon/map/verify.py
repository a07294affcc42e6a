"""Geometric verification of a loop candidate: is keyframe `query` really seeing the place of keyframe `match`?

Steps: ORB matches (Hamming, Lowe's ratio test); an essential matrix by RANSAC on the matches (two-view
epipolar consistency, which needs no 3-D and rejects most false place matches); then the relative transform
from the 3-D keypoints of both keyframes by RANSAC over Umeyama fits: SE(3) when both are metric, Sim(3) when
scale may have drifted (monocular and learned up-to-scale backends); last, its rotation and translation are
refined by minimising the reprojection error of both keyframes' 3-D points in the other image (as ORB-SLAM
refines its loop Sim(3)): depth from monocular or learned point maps is coarse, pixel positions are not, so the
rotation and translation direction come out far better than from the 3-D fit alone. The scale stays the 3-D
fit's: a reprojection sees the scale only through the parallax between the two views (s R X + t projects like
R X + t / s), so at a true revisit, where the cameras nearly coincide, it does not determine it at all (the
refined scale of a revisit 0.02 degrees off wandered to 10^7 on a rendered loop), while the 3-D fit measures it
from the depths of all inliers. The result maps camera points of `query` into the camera frame of `match`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from recon.geometry import GeometryError, Sim3, so3_exp, so3_log, umeyama
from recon.geometry.epipolar import consistent_matches
from recon.map.keyframes import Keyframe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyOptions:
    """Thresholds of the verification (all relative, so metric and up-to-scale backends share them).

    Attributes:
        ratio: Lowe's ratio test on the two nearest ORB descriptors.
        min_matches: matches needed before fitting anything.
        epipolar_px: essential-matrix inlier threshold in pixels.
        inlier_rel: 3-D inlier threshold as a fraction of the query keyframe's median depth.
        min_inliers: 3-D inliers needed to accept the loop.
        min_inlier_ratio: 3-D inliers over matches with 3-D on both sides.
        iterations: 3-D RANSAC iterations.
    """

    ratio: float = 0.8
    min_matches: int = 30
    epipolar_px: float = 2.0
    inlier_rel: float = 0.05
    min_inliers: int = 25
    min_inlier_ratio: float = 0.4
    iterations: int = 200


@dataclass(frozen=True)
class LoopMeasurement:
    """A verified loop: `S_match_query` maps query-camera points into the match camera; `inliers` supports it."""

    query: int
    match: int
    S_match_query: Sim3
    inliers: int
    matches: int


def match_descriptors(d_a: np.ndarray, d_b: np.ndarray, ratio: float) -> np.ndarray:
    """Index pairs [m,2] (a, b) passing the ratio test and the mutual-nearest check."""
    if len(d_a) < 2 or len(d_b) < 2:
        return np.zeros((0, 2), np.int64)
    bf = cv2.BFMatcher(cv2.NORM_HAMMING)
    knn = bf.knnMatch(d_a, d_b, k=2)
    back = {m.queryIdx: m.trainIdx for m in bf.match(d_b, d_a)}
    pairs = [(m.queryIdx, m.trainIdx) for m, n in (p for p in knn if len(p) == 2)
             if m.distance < ratio * n.distance and back.get(m.trainIdx) == m.queryIdx]
    return np.array(pairs, np.int64).reshape(-1, 2)


def ransac_similarity(src: np.ndarray, dst: np.ndarray, with_scale: bool, threshold: float, iterations: int,
                      seed: int = 0) -> tuple[Sim3, np.ndarray] | None:
    """Robust Umeyama: the (Sim(3) or SE(3)) `dst ~ S(src)` with the most inliers, refitted on them."""
    n = len(src)
    if n < 3:
        return None
    rng = np.random.default_rng(seed)
    best = np.zeros(n, bool)
    for _ in range(iterations):
        idx = rng.choice(n, 3, replace=False)
        try:
            s, R, t = umeyama(src[idx], dst[idx], with_scale)
        except GeometryError:
            continue
        err = np.linalg.norm(dst - (s * src @ R.T + t), axis=1)
        inl = err < threshold
        if inl.sum() > best.sum():
            best = inl
    if best.sum() < 3:
        return None
    for _ in range(2):  # refit on the inliers, then re-select with the refined transform
        try:
            s, R, t = umeyama(src[best], dst[best], with_scale)
        except GeometryError:
            return None
        best_new = np.linalg.norm(dst - (s * src @ R.T + t), axis=1) < threshold
        if best_new.sum() < 3:
            break
        best = best_new
    return Sim3(s, R, t), best


@dataclass(frozen=True)
class RelativeFit:
    """A robust relative transform between two keyframes and its support.

    Attributes:
        S_match_query: maps query-camera points into the match camera.
        inliers: 3-D inliers; candidates: matches with 3-D on both sides; matches: epipolar-consistent matches.
        residual: rms 3-D residual of the inliers per coordinate, in the match keyframe's units.
        spread: sum over the inliers of the squared distance of their match-side points from their centroid
            (how far apart the points are: the lever arm that determines rotation and scale).
    """

    S_match_query: Sim3
    inliers: int
    candidates: int
    matches: int
    residual: float
    spread: float

    @property
    def log_scale_sigma(self) -> float:
        """Standard deviation of log(scale) for independent residuals: the residual over the lever arm (the
        Umeyama scale is a least-squares slope over `spread`)."""
        return self.residual / max(float(np.sqrt(self.spread)), 1e-12)


def fit_relative(query: Keyframe, match: Keyframe, K: np.ndarray, *, metric: bool,
                 options: VerifyOptions = VerifyOptions(), refine: bool = True) -> RelativeFit | None:
    """ORB matches, epipolar filter, RANSAC Umeyama (Sim(3) unless `metric`) and, with `refine`, reprojection
    refinement of rotation and translation; None when too few matches or 3-D points remain for a fit. No
    acceptance test: callers judge the support."""
    pairs = match_descriptors(query.descriptors, match.descriptors, options.ratio)
    if len(pairs) < options.min_matches:
        return None
    epi = consistent_matches(query.keypoints[pairs[:, 0]], match.keypoints[pairs[:, 1]], K, options.epipolar_px)
    pairs = pairs[epi]
    if len(pairs) < options.min_matches:
        return None
    src = query.points_cam[pairs[:, 0]].astype(np.float64)
    dst = match.points_cam[pairs[:, 1]].astype(np.float64)
    ok = np.all(np.isfinite(src), axis=1) & np.all(np.isfinite(dst), axis=1)
    if ok.sum() < options.min_inliers:
        return None
    src, dst = src[ok], dst[ok]
    # Residuals are measured in the match keyframe's units; its median depth sets the threshold.
    threshold = options.inlier_rel * max(match.scale, 1e-9)
    fit = ransac_similarity(src, dst, not metric, threshold, options.iterations, seed=query.index)
    if fit is None:
        return None
    S, inl = fit
    n_in = int(inl.sum())
    res = dst[inl] - S.apply_points(src[inl])
    residual = float(np.sqrt(np.sum(res ** 2) / (3 * max(n_in - 7, 1))))
    spread = float(np.sum((dst[inl] - dst[inl].mean(axis=0)) ** 2))
    if refine:
        S = refine_reprojection(S, src[inl], dst[inl], query.keypoints[pairs[ok][inl, 0]],
                                match.keypoints[pairs[ok][inl, 1]], K, pixel_scale=options.epipolar_px)
    return RelativeFit(S, n_in, len(src), len(pairs), residual, spread)


def accepted(fit: RelativeFit | None, options: VerifyOptions) -> bool:
    """Enough 3-D inliers, absolutely and as a fraction of the matches with 3-D."""
    return fit is not None and fit.inliers >= options.min_inliers and \
        fit.inliers >= options.min_inlier_ratio * fit.candidates


def verify_loop(query: Keyframe, match: Keyframe, K: np.ndarray, *, metric: bool,
                options: VerifyOptions = VerifyOptions()) -> LoopMeasurement | None:
    """The verified relative transform between two keyframes, or None when the candidate fails a check."""
    fit = fit_relative(query, match, K, metric=metric, options=options)
    if fit is None:
        return None
    if not accepted(fit, options):
        logger.debug("loop %d -> %d rejected: %d/%d 3-D inliers", query.index, match.index, fit.inliers,
                     fit.candidates)
        return None
    return LoopMeasurement(query.index, match.index, fit.S_match_query, fit.inliers, fit.matches)


def _project(P_n3: np.ndarray, K: np.ndarray) -> np.ndarray:
    z = np.maximum(P_n3[:, 2:3], 1e-9)
    return (P_n3[:, :2] / z) * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])


def refine_reprojection(S: Sim3, X_query: np.ndarray, X_match: np.ndarray, uv_query: np.ndarray,
                        uv_match: np.ndarray, K: np.ndarray, *, pixel_scale: float) -> Sim3:
    """`S_match_query` with its rotation and translation minimising both images' reprojection errors (robust
    soft-L1 loss, scipy); its scale is kept (see the module docstring)."""
    from scipy.optimize import least_squares

    if len(X_query) < 6:
        return S

    def unpack(x: np.ndarray) -> Sim3:
        return Sim3(S.s, so3_exp(x[:3]), x[3:6])

    def residuals(x: np.ndarray) -> np.ndarray:
        T = unpack(x)
        in_match = T.apply_points(X_query)
        in_query = T.inverse().apply_points(X_match)
        return np.concatenate([(_project(in_match, K) - uv_match).ravel(),
                               (_project(in_query, K) - uv_query).ravel()])

    x0 = np.concatenate([so3_log(S.R), S.t])
    try:
        sol = least_squares(residuals, x0, loss="soft_l1", f_scale=pixel_scale, max_nfev=50)
        refined = unpack(sol.x)
    except (ValueError, GeometryError):
        return S
    return refined
