"""Focal-length self-calibration for monocular video with unknown intrinsics.

Why: with an assumed focal length (0.8 x max(w, h)) the reconstruction is a projective distortion of the scene,
and monocular ATE on real footage was measured 3x worse than with the true K. The principal point is taken at
the image centre and fx = fy (true of almost every camera to well under the focal error that matters); only f
is searched.

How: for each image pair the fundamental matrix F is estimated once (RANSAC, it does not depend on K). For a
candidate focal f, E = K(f)^T F K(f) is an essential matrix only at the true f, where its two non-zero
singular values are equal (Mendonca & Cipolla, "A simple technique for self-calibration", CVPR 1999). The
cost sum_pairs (s1 - s2) / (s1 + s2) is minimised over f by a 1-D search on a log grid (fields of view of about
18 to 120 degrees) refined by a bounded scalar minimisation. Several pairs with different baselines make the
minimum well defined; motions that leave f unobservable (pure rotation or translation, optical axes meeting
at one point as in an orbit) flatten the cost, which the estimate reports as not `confident`. The monocular
tracker then refines f in its bundle adjustment over keyframes (recon.backends.geometric.bundle).

`multiview_focal` scores candidate focals by the reprojection error of a small multi-view reconstruction at
each, which an orbit does not defeat; it reports a standard deviation. It is not used by the tracker yet: on
KLT tracks of rendered orbits it needs ~60 held frames and was still wrong on some windows, and holding the
initialisation that long cost more ATE than the focal gained (docs/benchmarks.md, monocular section).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import minimize_scalar

from recon.geometry.epipolar import essential_ransac

logger = logging.getLogger(__name__)

MIN_PAIR_POINTS = 40


@dataclass
class FocalEstimate:
    """Result of `estimate_focal`.

    Attributes:
        f: focal length in pixels (fx = fy), or None when no pair could be used.
        pairs: image pairs that contributed; cost: the summed cost at f (0 for a perfect essential matrix).
        sharpness: mean cost at f / 1.25 and f * 1.25 divided by the cost at f (>> 1: a well-defined minimum).
        confident: True when enough pairs agree on a clear minimum (otherwise f is a weak guess).
        std: standard deviation of log f (= relative error of f) where the estimator gives one (`multiview_focal`).
    """

    f: float | None
    pairs: int = 0
    cost: float = float("nan")
    sharpness: float = 0.0
    confident: bool = False
    std: float = float("inf")


def intrinsics(f: float, width: int, height: int) -> np.ndarray:
    """Pinhole K with focal f and the principal point at the image centre (pixel centres at integers)."""
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def _fundamental_inliers(p0: np.ndarray, p1: np.ndarray, min_points: int) -> tuple[np.ndarray, np.ndarray] | None:
    """RANSAC fundamental matrix and its inlier mask [N] (bool), or None below `min_points` inliers."""
    if len(p0) < min_points:
        return None
    F, mask = cv2.findFundamentalMat(p0.astype(np.float64), p1.astype(np.float64), cv2.FM_RANSAC, 1.0, 0.999)
    if F is None or F.shape != (3, 3) or mask is None or int(mask.sum()) < min_points:
        return None
    return F, mask.reshape(-1) > 0


def _fundamental(p0: np.ndarray, p1: np.ndarray) -> np.ndarray | None:
    found = _fundamental_inliers(p0, p1, MIN_PAIR_POINTS)
    return None if found is None else found[0]


def _focal_range(width: int, height: int, fov_deg: tuple[float, float]) -> tuple[float, float]:
    """The focal lengths (px) of the widest and the narrowest field of view in `fov_deg` (across max(w, h))."""
    half = 0.5 * max(width, height)
    return half / np.tan(np.radians(fov_deg[1]) / 2), half / np.tan(np.radians(fov_deg[0]) / 2)


def essential_cost(F_list: list[np.ndarray], f: float, width: int, height: int) -> float:
    """Summed (s1 - s2) / (s1 + s2) of E = K^T F K over the pairs (0 where every E is a true essential matrix)."""
    K = intrinsics(f, width, height)
    total = 0.0
    for F in F_list:
        s = np.linalg.svd(K.T @ F @ K, compute_uv=False)
        total += (s[0] - s[1]) / max(s[0] + s[1], 1e-300)
    return float(total)


def estimate_focal(pairs: list[tuple[np.ndarray, np.ndarray]], width: int, height: int, *,
                   fov_deg: tuple[float, float] = (18.0, 120.0), min_pairs: int = 3,
                   min_sharpness: float = 1.5) -> FocalEstimate:
    """Focal length from point correspondences of several image pairs (each pair: two Nx2 pixel arrays)."""
    F_list = [F for p0, p1 in pairs if (F := _fundamental(p0, p1)) is not None]
    if not F_list:
        return FocalEstimate(None)
    f_lo, f_hi = _focal_range(width, height, fov_deg)
    grid = np.geomspace(f_lo, f_hi, 96)
    costs = np.array([essential_cost(F_list, f, width, height) for f in grid])
    k = int(np.argmin(costs))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    res = minimize_scalar(lambda lf: essential_cost(F_list, float(np.exp(lf)), width, height),
                          bounds=(np.log(lo), np.log(hi)), method="bounded", options={"xatol": 1e-4})
    f = float(np.exp(res.x)) if res.success else float(grid[k])
    c = essential_cost(F_list, f, width, height)
    around = 0.5 * (essential_cost(F_list, f / 1.25, width, height) + essential_cost(F_list, f * 1.25, width, height))
    sharp = around / max(c, 1e-12)
    at_edge = k in (0, len(grid) - 1)
    confident = len(F_list) >= min_pairs and sharp >= min_sharpness and not at_edge
    return FocalEstimate(f, len(F_list), c, float(sharp), confident)


# -- multi-view focal search ------------------------------------------------------------------------------------
#
# Why: every image pair of an orbit (optical axes through one point) is degenerate for the two-view criterion
# above (Sturm, "On focal length calibration from two views", CVPR 2001): the essential-matrix cost is flat in f.
# Three or more views are not: a reconstruction at a wrong f cannot reproject all of them as well as one at the
# true f. So each candidate f gets its own small reconstruction (two-view from the outer views, the others by PnP,
# a bundle adjustment at that fixed f) and is scored by its reprojection error; the score's curvature around the
# minimum gives the uncertainty of f.

MV_MIN_POINTS = 30


def _spread(pts_n2: np.ndarray, count: int) -> np.ndarray:
    """Indices of up to `count` points spread over the image (round-robin over an 8x6 grid of cells)."""
    if len(pts_n2) <= count:
        return np.arange(len(pts_n2))
    lo, hi = pts_n2.min(0), pts_n2.max(0) + 1e-6
    cell = (np.floor((pts_n2 - lo) / (hi - lo) * [8, 6])).astype(int)
    key = cell[:, 0] * 6 + cell[:, 1]
    rank = np.zeros(len(pts_n2), int)
    for k in np.unique(key):
        idx = np.flatnonzero(key == k)
        rank[idx] = np.arange(len(idx))
    order = np.lexsort((key, rank))
    return np.sort(order[:count])


@dataclass
class MultiViewTracks:
    """Pixels uv [V,P,2] of P tracks seen in all of V views (time order), F between the outer views."""

    uv: np.ndarray
    F: np.ndarray


def common_tracks(views: list[tuple[np.ndarray, np.ndarray]], *, max_views: int = 6,
                  max_points: int = 80) -> MultiViewTracks | None:
    """Tracks seen in every one of up to `max_views` views evenly spread over `views` ((ids, pixels) per view),
    the epipolar outliers between the outer views removed (that test does not depend on f); None if too few."""
    if len(views) < 3:
        return None
    pick = np.unique(np.round(np.linspace(0, len(views) - 1, min(max_views, len(views)))).astype(int))
    chosen = [views[k] for k in pick]
    common = set(int(i) for i in chosen[0][0])
    for ids, _ in chosen[1:]:
        common &= set(int(i) for i in ids)
    if len(common) < MV_MIN_POINTS:
        return None
    order = np.array(sorted(common), np.int64)
    uv = []
    for ids, pts in chosen:
        row = {int(i): k for k, i in enumerate(ids)}
        uv.append(np.asarray(pts, np.float64)[[row[int(i)] for i in order]])
    uv_vp2 = np.stack(uv)
    found = _fundamental_inliers(uv_vp2[0], uv_vp2[-1], MV_MIN_POINTS)
    if found is None:
        return None
    F, inliers = found
    uv_vp2 = uv_vp2[:, inliers]
    keep = _spread(uv_vp2[0], max_points)
    return MultiViewTracks(uv_vp2[:, keep], F)


def reconstruction_cost(tracks: MultiViewTracks, f: float, width: int, height: int, *, max_nfev: int = 40,
                        huber_px: float = 1.5, cap_px: float = 4.0) -> np.ndarray:
    """Per track: summed squared reprojection error (px^2, each capped at `cap_px`^2) over the views, of the best
    reconstruction of `tracks` found at focal `f`; NaN for a track that triangulates behind a camera at this f
    (distant points flip sides with f: the caller compares f values on the tracks valid at all of them).

    The outer views are reconstructed from their essential matrix at this f, the others posed by least-squares
    PnP on every track (seeded by the previous view; no RANSAC threshold, since at a wrong f every track is off
    by a few pixels), then all views and points are bundle-adjusted at this f.
    """
    from recon.backends.geometric.bundle import bundle_adjust
    from recon.backends.geometric.pnp import T_from_rt, rt_from_T

    K = intrinsics(f, width, height)
    uv = tracks.uv
    V, P = uv.shape[:2]
    out = np.full(P, np.nan)
    model = essential_ransac(uv[0], uv[-1], K, 1.0)
    if model is None:
        return out
    _, R, t, _ = cv2.recoverPose(model[0], uv[0], uv[-1], K)
    T_last = np.eye(4)
    T_last[:3, :3], T_last[:3, 3] = R, t.reshape(3)
    Xh = cv2.triangulatePoints(K @ np.eye(4)[:3], K @ T_last[:3], uv[0].T, uv[-1].T)
    X = (Xh[:3] / np.where(np.abs(Xh[3]) > 1e-12, Xh[3], 1e-12)).T
    front = (X[:, 2] > 0) & ((X @ R.T + t.reshape(3))[:, 2] > 0) & (np.abs(Xh[3]) > 1e-12)
    if front.sum() < MV_MIN_POINTS // 2:
        return out
    X, uv, P = X[front], uv[:, front], int(front.sum())
    depth = float(np.median(X[:, 2]))
    X, T_last[:3, 3] = X / depth, T_last[:3, 3] / depth
    T = [np.eye(4)]
    for v in range(1, V - 1):
        rvec, tvec = rt_from_T(T[-1])
        ok, rvec, tvec = cv2.solvePnP(np.ascontiguousarray(X), np.ascontiguousarray(uv[v]), K, None, rvec, tvec,
                                      useExtrinsicGuess=True,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
        T.append(T_from_rt(rvec, tvec) if ok else T[-1])
    T.append(T_last)
    fixed = np.zeros(V, bool)
    fixed[0] = True
    obs_cam, obs_pt = np.repeat(np.arange(V), P), np.tile(np.arange(P), V)
    _, _, err, _ = bundle_adjust(np.stack(T), fixed, X, obs_cam, obs_pt, uv.reshape(-1, 2), K, huber_px=huber_px,
                                 max_nfev=max_nfev, scale_pair=(0, V - 1))
    out[front] = (np.minimum(err, cap_px) ** 2).reshape(V, P).sum(0)
    return out


def multiview_focal(views: list[tuple[np.ndarray, np.ndarray]], width: int, height: int, *,
                    fov_deg: tuple[float, float] = (18.0, 120.0), grid: int = 9, refinements: int = 4,
                    max_std: float = 0.02, max_views: int = 5, max_points: int = 40) -> FocalEstimate:
    """Focal length from tracks over several views: the f whose multi-view reconstruction reprojects best.

    A log grid over the field-of-view range is refined around its best value (each refinement halves the
    spacing), then a parabola through the best f and its neighbours gives the minimum and the curvature S'' of
    the cost S(log f). With the reprojection noise s^2 = S / (residuals - parameters), the standard deviation of
    log f is sqrt(2 s^2 / S'') (Gauss-Newton). `confident` when it is at most `max_std` and the minimum is inside
    the range: a 2 % standard deviation keeps the focal within the 5 % goal at 2.5 sigma.
    """
    tracks = common_tracks(views, max_views=max_views, max_points=max_points)
    if tracks is None:
        return FocalEstimate(None)
    lf_lo, lf_hi = (float(np.log(f)) for f in _focal_range(width, height, fov_deg))
    per_track: dict[float, np.ndarray] = {}

    def at(lf: float) -> None:
        if lf not in per_track:
            per_track[lf] = reconstruction_cost(tracks, float(np.exp(lf)), width, height)

    def costs(keys: list[float]) -> dict[float, float]:
        """Summed cost of each f over the tracks valid at all of `keys` (means over its own valid tracks where
        fewer than MV_MIN_POINTS / 2 tracks are common)."""
        valid = np.all([np.isfinite(per_track[k]) for k in keys], axis=0)
        if valid.sum() >= MV_MIN_POINTS // 2:
            return {k: float(per_track[k][valid].sum()) for k in keys}
        return {k: float(np.nanmean(per_track[k])) if np.isfinite(per_track[k]).any() else np.inf for k in keys}

    def near(best: float) -> list[float]:
        return sorted(k for k in per_track if abs(k - best) <= np.log(1.2))

    step = (lf_hi - lf_lo) / (grid - 1)
    for lf in np.linspace(lf_lo, lf_hi, grid):
        at(float(lf))
    cost = costs(list(per_track))
    best = min(cost, key=cost.get)
    for _ in range(refinements):
        step /= 2
        for lf in (best - step, best + step):
            if lf_lo <= lf <= lf_hi:
                at(float(lf))
        cost = costs(near(best))
        best = min(cost, key=cost.get)
    V, P = tracks.uv.shape[:2]
    coarse = (lf_hi - lf_lo) / (grid - 1)
    if not np.isfinite(cost[best]) or best < lf_lo + 0.75 * coarse or best > lf_hi - 0.75 * coarse:
        return FocalEstimate(float(np.exp(best)), V, cost[best], 0.0, False)  # no minimum inside the range
    # Parabola S(lf) = a dx^2 + b dx + c fitted to the evaluations within 20 % of the best (at least 5 of them
    # after the refinements): a least-squares fit, so one reconstruction that converged badly bends it little.
    x = np.array(near(best))
    cost = costs(list(x))
    y = np.array([cost[v] for v in x])
    a, b, _ = np.polyfit(x - best, y, 2) if len(x) >= 4 else (0.0, 0.0, 0.0)
    lf = float(np.clip(best - b / (2 * a), x[0], x[-1])) if a > 0 else best
    n_used = int(np.all([np.isfinite(per_track[k]) for k in x], axis=0).sum())
    n_res, n_par = 2 * V * n_used + 1, 3 * n_used + 6 * (V - 1)
    s2 = cost[best] / max(n_res - n_par, 1)
    std = float(np.sqrt(s2 / a)) if a > 0 else float("inf")  # var(lf) = 2 s^2 / S'' with S'' = 2a
    sharp = float(min(y[0], y[-1]) / max(cost[best], 1e-12))
    logger.debug("multi-view focal search: %d views, %d tracks (%d in the fit), %d reconstructions, f %.1f px, std "
                 "%.1f %%, cost %.1f px^2", V, P, n_used, len(per_track), np.exp(lf), 100 * std, cost[best])
    return FocalEstimate(float(np.exp(lf)), V, cost[best], sharp, std <= max_std, std)
