"""Constant time offset between an estimated trajectory and its ground truth (a video whose stamps start at 0
against ground truth on the capture clock, a recorder that started late).

`estimate_time_offset` returns the offset `dt` to add to the prediction's stamps so they match the ground truth's.
Candidates: no offset, the difference of the first stamps, and the peak of the normalised cross-correlation of the
two rotation-speed profiles (angular speed is independent of the estimate's world frame and scale, so it works for
up-to-scale monocular estimates too), refined to sub-sample precision. Each candidate is scored by how many poses
it matches one-to-one within `max_diff`, then by the ATE after alignment; the best wins.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np

from recon.eval.trajectory import AlignMode, EvaluationError, absolute_trajectory_error, associate_timestamps
from recon.geometry.transforms import rotation_angle

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OffsetEstimate:
    """The chosen offset (ns, added to the prediction's stamps), its match count and every candidate's score."""

    offset_ns: int
    matched: int
    candidates: dict[str, tuple[int, int, float]]  # name -> (offset_ns, matched, ATE rmse or inf)


def _angular_speed(t_ns: np.ndarray, T: np.ndarray, grid_ns: np.ndarray) -> np.ndarray:
    """Rotation speed (rad/s) between consecutive poses, sampled on `grid_ns` (0 outside the trajectory)."""
    order = np.argsort(t_ns)
    t, T = t_ns[order].astype(np.float64), T[order]
    if len(t) < 3:
        return np.zeros(len(grid_ns))
    R_rel = np.einsum("nji,njk->nik", T[:-1, :3, :3], T[1:, :3, :3])  # R_i^T R_{i+1}
    dt = np.maximum(np.diff(t) * 1e-9, 1e-6)
    speed = rotation_angle(R_rel) / dt
    mid = 0.5 * (t[:-1] + t[1:])
    return np.interp(grid_ns.astype(np.float64), mid, speed, left=0.0, right=0.0)


def _xcorr_offset(t_pred: np.ndarray, T_pred: np.ndarray, t_gt: np.ndarray, T_gt: np.ndarray) -> int | None:
    """Offset (ns) at the peak of the normalised cross-correlation of the rotation-speed profiles, or None when the
    motion is too uniform to tell."""
    step = float(np.median(np.diff(np.sort(t_pred)))) if len(t_pred) > 1 else 0.0
    if not step > 0:
        return None
    step = min(step, float(np.median(np.diff(np.sort(t_gt)))) if len(t_gt) > 1 else step)
    g_pred = np.arange(t_pred.min(), t_pred.max(), step)
    g_gt = np.arange(t_gt.min(), t_gt.max(), step)
    if len(g_pred) < 8 or len(g_gt) < 8:
        return None
    a = _angular_speed(t_pred, T_pred, g_pred)
    b = _angular_speed(t_gt, T_gt, g_gt)
    a, b = a - a.mean(), b - b.mean()
    if not (a.std() > 0 and b.std() > 0):
        return None
    corr = np.correlate(b, a, mode="full")  # corr[k] pairs b[i] with a[i - (k - len(a) + 1)]
    # Normalise by the overlap so short overlaps at the ends do not win by chance.
    overlap = np.correlate(np.ones(len(b)), np.ones(len(a)), mode="full")
    valid = overlap >= 0.3 * min(len(a), len(b))
    corr = np.where(valid, corr / np.maximum(overlap, 1), -np.inf)
    k = int(np.argmax(corr))
    shift = float(k - (len(a) - 1))
    if 0 < k < len(corr) - 1 and np.isfinite(corr[k - 1]) and np.isfinite(corr[k + 1]):
        denom = corr[k - 1] - 2 * corr[k] + corr[k + 1]
        if denom < 0:
            shift += 0.5 * (corr[k - 1] - corr[k + 1]) / denom  # parabolic refinement of the peak
    return int(round(g_gt[0] - g_pred[0] + shift * step))


def estimate_time_offset(t_pred_ns: np.ndarray, T_pred: np.ndarray, t_gt_ns: np.ndarray, T_gt: np.ndarray, *,
                         max_diff_ns: int, align: AlignMode = "sim3") -> OffsetEstimate:
    """The constant offset to add to the prediction's stamps (see the module doc)."""
    t_pred = np.asarray(t_pred_ns, np.int64)
    t_gt = np.asarray(t_gt_ns, np.int64)
    if len(t_pred) == 0 or len(t_gt) == 0:
        raise EvaluationError("time offset: both trajectories need poses")
    candidates: dict[str, int] = {"none": 0, "first stamps": int(t_gt.min() - t_pred.min())}
    xcorr = _xcorr_offset(t_pred, np.asarray(T_pred), t_gt, np.asarray(T_gt))
    if xcorr is not None:
        candidates["rotation-speed correlation"] = xcorr
    scores: dict[str, tuple[int, int, float]] = {}
    for name, offset in candidates.items():
        assoc = associate_timestamps(t_pred + offset, t_gt, max_diff_ns)
        ate = float("inf")
        if len(assoc) >= 3:
            with contextlib.suppress(EvaluationError):  # degenerate matched subset: scored by its count only
                ate = absolute_trajectory_error(np.asarray(T_pred)[assoc.idx_pred], np.asarray(T_gt)[assoc.idx_gt],
                                                align).rmse
        scores[name] = (offset, len(assoc), ate)
    # Most matches first; among (nearly) equal counts the lower ATE, then the smaller offset.
    most = max(s[1] for s in scores.values())
    close = {n: s for n, s in scores.items() if s[1] >= 0.98 * most}
    best = min(close, key=lambda n: (close[n][2], abs(close[n][0])))
    offset, matched, _ = scores[best]
    logger.debug("time offset candidates %s -> %s", scores, best)
    return OffsetEstimate(offset, matched, scores)
