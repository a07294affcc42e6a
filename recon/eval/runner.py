"""Evaluate an estimated trajectory against ground truth into one JSON-serialisable metrics dict.

Used by `recon replay` (writes metrics.json when a sequence has ground truth) and by `recon eval PRED GT`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from recon.eval.trajectory import (
    AlignMode,
    EvaluationError,
    absolute_trajectory_error,
    associate_timestamps,
    relative_pose_error,
    sim3_to_dict,
    trajectory_length,
)
from recon.io.trajectory import read_tum_trajectory
from recon.types import Trajectory

logger = logging.getLogger(__name__)

TrajectoryLike = str | Path | Trajectory | tuple[np.ndarray, np.ndarray]


def load_trajectory(source: TrajectoryLike, name: str = "trajectory") -> Trajectory:
    """A Trajectory from a TUM file path, a Trajectory, or a (t_ns [N], T_world_cam [N,4,4]) pair."""
    if isinstance(source, Trajectory):
        return source
    if isinstance(source, str | Path):
        t_ns, T = read_tum_trajectory(source)
        return Trajectory(t_ns, T)
    if isinstance(source, tuple) and len(source) == 2:
        t_ns = np.asarray(source[0], dtype=np.int64).reshape(-1)
        T = np.asarray(source[1], dtype=np.float64)
        if T.shape != (len(t_ns), 4, 4):
            raise EvaluationError(f"{name}: expected t_ns [N] and T_world_cam [N,4,4], got {t_ns.shape} and {T.shape}")
        return Trajectory(t_ns, T)
    raise EvaluationError(f"{name}: expected a TUM path, a Trajectory or (t_ns, T_world_cam), got {type(source)}")


def _keep_last_per_timestamp(traj: Trajectory) -> Trajectory:
    """Backends may emit a refined pose for a frame again; the last one written is the final estimate."""
    t = np.asarray(traj.t_ns, dtype=np.int64)
    rev_unique, rev_idx = np.unique(t[::-1], return_index=True)
    if rev_unique.size == t.size:
        return traj
    keep = np.sort(t.size - 1 - rev_idx)
    logger.info("prediction repeats %d timestamps; keeping the last pose of each", t.size - keep.size)
    return Trajectory(t[keep], np.asarray(traj.T_world_cam)[keep])


def _finite(x: float) -> float | None:
    """JSON has no NaN: undefined numbers become null."""
    return x if math.isfinite(x) else None


def evaluate_run(
    pred: TrajectoryLike,
    gt: TrajectoryLike,
    *,
    align: AlignMode = "sim3",
    delta: int = 1,
    all_pairs: bool = False,
    max_diff_s: float = 0.01,
    t_offset_s: float | str = 0.0,
    min_match_fraction: float = 0.9,
) -> dict[str, Any]:
    """Associate, align and score a predicted trajectory; returns a JSON-serialisable dict.

    Args:
        pred, gt: TUM paths, Trajectory objects, or (t_ns, T_world_cam) pairs.
        align: "sim3" for up-to-scale methods (evo --align --correct_scale), "se3" for metric ones, "none".
        delta: RPE frame delta (in matched poses); RPE uses the same alignment as ATE.
        all_pairs: RPE over every pair (i, i + delta) rather than evo's default stride of `delta`.
        max_diff_s: largest timestamp difference accepted when associating poses.
        t_offset_s: seconds added to the prediction's stamps before matching, or "auto" to detect a constant offset
            (`recon.eval.time_offset`; used when it matches more poses than none).
        min_match_fraction: warn (and say so in the result, `match_warning`) when fewer predicted poses match.

    Keys: num_pred_poses, num_gt_poses, num_matched, align, ate_rmse/mean/median/std/max, trajectory_length
    (ground-truth path over the matched poses), ate_pct_of_length, rpe_delta, rpe_trans_rmse/mean/median/max,
    rpe_rot_deg_rmse/mean/median/max, rpe_num_pairs, scale, alignment {s, R, t}, max_abs_dt_s, t_offset_s,
    t_offset_detected, match_fraction, match_warning. Undefined numbers (no RPE pair, zero length) are null.
    """
    pred_traj = _keep_last_per_timestamp(load_trajectory(pred, "prediction"))
    gt_traj = load_trajectory(gt, "ground truth")
    max_diff_ns = int(round(max_diff_s * 1e9))
    detected = isinstance(t_offset_s, str)
    if detected:
        if t_offset_s != "auto":
            raise EvaluationError(f"t_offset_s must be a number of seconds or 'auto', got {t_offset_s!r}")
        from recon.eval.time_offset import estimate_time_offset

        found = estimate_time_offset(pred_traj.t_ns, pred_traj.T_world_cam, gt_traj.t_ns, gt_traj.T_world_cam,
                                     max_diff_ns=max_diff_ns, align=align)
        offset_ns = found.offset_ns
        if offset_ns:
            logger.warning("time offset detected: %+.6f s added to the prediction's stamps (%d poses match, %d "
                           "without it); give --t-offset 0 to evaluate without it", offset_ns * 1e-9, found.matched,
                           found.candidates["none"][1])
    else:
        offset_ns = int(round(float(t_offset_s) * 1e9))
    t_pred = pred_traj.t_ns + offset_ns
    assoc = associate_timestamps(t_pred, gt_traj.t_ns, max_diff_ns)
    if len(assoc) == 0:
        raise EvaluationError(
            f"no prediction timestamp lies within {max_diff_s} s of a ground-truth timestamp "
            f"({len(pred_traj)} predicted, {len(gt_traj)} ground-truth poses, offset {offset_ns * 1e-9:+.6f} s); "
            "check both use the same clock, or detect a constant offset with --t-offset auto"
        )
    T_pred = np.asarray(pred_traj.T_world_cam, dtype=np.float64)[assoc.idx_pred]
    T_gt = np.asarray(gt_traj.T_world_cam, dtype=np.float64)[assoc.idx_gt]
    logger.info("matched %d of %d predicted poses to ground truth", len(assoc), len(pred_traj))
    fraction = len(assoc) / len(pred_traj)
    warning = None
    if fraction < min_match_fraction:
        warning = (f"only {len(assoc)} of {len(pred_traj)} predicted poses ({100 * fraction:.0f} %) have a "
                   f"ground-truth pose within {max_diff_s} s: the figures describe that part only (a time offset? "
                   "try --t-offset auto, or a larger --max-diff)")
        logger.warning("%s", warning)

    ate = absolute_trajectory_error(T_pred, T_gt, align)
    length = trajectory_length(T_gt)
    out: dict[str, Any] = {
        "num_pred_poses": len(pred_traj),
        "num_gt_poses": len(gt_traj),
        "num_matched": len(assoc),
        "align": align,
        "max_abs_dt_s": float(np.abs(assoc.dt_ns).max()) * 1e-9,
        "t_offset_s": offset_ns * 1e-9,
        "t_offset_detected": detected,
        "match_fraction": fraction,
        "match_warning": warning,
    }
    out.update({f"ate_{k}": _finite(v) for k, v in ate.stats.items() if k != "min"})
    out["trajectory_length"] = length
    out["ate_pct_of_length"] = _finite(100.0 * ate.rmse / length) if length > 0 else None
    out["rpe_delta"] = delta
    try:
        rpe = relative_pose_error(T_pred, T_gt, delta, align, all_pairs=all_pairs)
    except EvaluationError as e:
        logger.warning("RPE skipped: %s", e)
        out["rpe_num_pairs"] = 0
        for k in ("rmse", "mean", "median", "max"):
            out[f"rpe_trans_{k}"] = None
            out[f"rpe_rot_deg_{k}"] = None
    else:
        out["rpe_num_pairs"] = len(rpe.pairs)
        for k in ("rmse", "mean", "median", "max"):
            out[f"rpe_trans_{k}"] = _finite(rpe.trans_stats[k])
            out[f"rpe_rot_deg_{k}"] = _finite(rpe.rot_stats[k])
    out["scale"] = ate.alignment.s
    out["alignment"] = sim3_to_dict(ate.alignment)
    return out
