"""Trajectory metrics: timestamp association (re-exported from `recon.utils.timestamps`),
ATE after Umeyama alignment, RPE over a frame delta.

Definitions follow evo (MichaelGrupp/evo 1.x), which the VGGT-family papers use through `evo_ape --align
--correct_scale` and `evo_rpe`, so our numbers are comparable with theirs (tests cross-check against evo):
- ATE: per matched pose, ||p_gt_i - p_aligned_i|| of camera centres after aligning the prediction to the
  ground truth with Umeyama on the centres (Sim(3) for up-to-scale methods, SE(3) for metric ones).
- RPE: per pair (i, j = i + delta), E = (Q_i^-1 Q_j)^-1 (P_i^-1 P_j) with Q ground truth and P prediction;
  translation error ||t_E||, rotation error angle(R_E) in degrees. Pairs are (0, d), (d, 2d), ... like evo's
  default, or every (i, i + d) with `all_pairs` (the reference protocol uses delta 1, where both coincide).
All poses are camera-to-world `T_world_cam` [N,4,4].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from recon.errors import ConfigError, ReconError
from recon.geometry.sim3 import Sim3
from recon.geometry.transforms import check_shape, inv_se3, rotation_angle
from recon.geometry.umeyama import umeyama
from recon.utils.timestamps import Association, associate_timestamps  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

AlignMode = Literal["sim3", "se3", "none"]
ALIGN_MODES: tuple[str, ...] = ("sim3", "se3", "none")


class EvaluationError(ReconError, ValueError):
    """Inputs cannot be evaluated (no matching timestamps, too few poses); the message says which."""


def _check_poses(name: str, T: np.ndarray) -> np.ndarray:
    T = check_shape(name, T, (4, 4))
    if T.ndim != 3:
        raise EvaluationError(f"{name} must be [N,4,4], got {T.shape}")
    if not np.all(np.isfinite(T)):
        raise EvaluationError(f"{name} contains NaN or inf")
    return T


def _check_align(align: str) -> str:
    if align not in ALIGN_MODES:
        raise ConfigError(f"align must be one of {', '.join(ALIGN_MODES)}, got {align!r}")
    return align


def _stats(errors: np.ndarray) -> dict[str, float]:
    if errors.size == 0:
        return {k: float("nan") for k in ("rmse", "mean", "median", "std", "min", "max")}
    return {
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "mean": float(np.mean(errors)),
        "median": float(np.median(errors)),
        "std": float(np.std(errors)),
        "min": float(np.min(errors)),
        "max": float(np.max(errors)),
    }


def align_trajectory(
    T_pred: np.ndarray, T_gt: np.ndarray, align: AlignMode = "sim3", *, strict: bool = False
) -> Sim3:
    """Sim(3) mapping predicted camera centres onto ground-truth ones (identity for align="none").

    Args:
        T_pred, T_gt: matched camera-to-world poses [N,4,4].
        align: "sim3" (Umeyama with scale: up-to-scale methods), "se3" (rigid: metric methods) or "none".
        strict: raise on a degenerate trajectory (all centres on a line). By default a straight trajectory
            still gets one of its optimal alignments and a warning: ATE and RPE do not depend on the
            arbitrary roll about the line.
    """
    T_pred = _check_poses("T_pred", T_pred)
    T_gt = _check_poses("T_gt", T_gt)
    if T_pred.shape != T_gt.shape:
        raise EvaluationError(f"matched trajectories need equal lengths, got {len(T_pred)} and {len(T_gt)}")
    if _check_align(align) == "none":
        return Sim3.identity()
    need = 3 if strict else (2 if align == "sim3" else 1)
    if len(T_pred) < need:
        raise EvaluationError(f"{align} alignment needs at least {need} matched poses, got {len(T_pred)}")
    s, R, t = umeyama(T_pred[:, :3, 3], T_gt[:, :3, 3], with_scale=align == "sim3", strict=strict)
    return Sim3(s, R, t)


@dataclass
class AteResult:
    """Absolute trajectory error of camera centres after alignment.

    Attributes:
        errors: [M] per-pose centre distances in ground-truth units.
        alignment: the Sim(3) applied to the prediction (scale 1 for se3 / none).
        T_pred_aligned: [M,4,4] aligned prediction.
        stats: rmse, mean, median, std, min, max of `errors`.
    """

    errors: np.ndarray
    alignment: Sim3
    T_pred_aligned: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def rmse(self) -> float:
        return self.stats["rmse"]


def absolute_trajectory_error(T_pred: np.ndarray, T_gt: np.ndarray, align: AlignMode = "sim3") -> AteResult:
    """ATE (translation part) of matched camera-to-world poses [N,4,4] after `align` (see align_trajectory)."""
    alignment = align_trajectory(T_pred, T_gt, align)
    T_aligned = alignment.apply_poses(np.asarray(T_pred, dtype=np.float64))
    errors = np.linalg.norm(T_aligned[:, :3, 3] - np.asarray(T_gt, dtype=np.float64)[:, :3, 3], axis=1)
    return AteResult(errors, alignment, T_aligned, _stats(errors))


def rpe_pairs(n: int, delta: int, all_pairs: bool = False) -> np.ndarray:
    """Index pairs [K,2] (i, i + delta): every i with `all_pairs`, else i = 0, delta, 2·delta, ... (evo's rule)."""
    if delta < 1:
        raise ConfigError(f"RPE delta must be >= 1 frame, got {delta}")
    starts = np.arange(0, n - delta) if all_pairs else np.arange(0, n - delta, delta)
    return np.stack([starts, starts + delta], axis=1).astype(np.int64)


@dataclass
class RpeResult:
    """Relative pose error over index pairs.

    Attributes:
        pairs: [K,2] index pairs (i, j) into the matched poses.
        trans_errors: [K] ||t_E|| in ground-truth units (after the alignment's scale).
        rot_errors_deg: [K] rotation angle of E in degrees.
        alignment: Sim(3) applied before computing relative motions (only its scale matters).
        trans_stats, rot_stats: rmse, mean, median, std, min, max.
    """

    delta: int
    pairs: np.ndarray
    trans_errors: np.ndarray
    rot_errors_deg: np.ndarray
    alignment: Sim3
    trans_stats: dict[str, float] = field(default_factory=dict)
    rot_stats: dict[str, float] = field(default_factory=dict)


def relative_pose_error(
    T_pred: np.ndarray,
    T_gt: np.ndarray,
    delta: int = 1,
    align: AlignMode = "none",
    *,
    all_pairs: bool = False,
) -> RpeResult:
    """RPE of matched camera-to-world poses [N,4,4] over pairs `delta` frames apart.

    `align="sim3"` first applies the Umeyama Sim(3) of the centres, like `evo_rpe --align --correct_scale`;
    since relative motions are invariant to a rigid change of world frame, only its scale changes the result.
    """
    T_pred = _check_poses("T_pred", T_pred)
    T_gt = _check_poses("T_gt", T_gt)
    if T_pred.shape != T_gt.shape:
        raise EvaluationError(f"RPE needs matched trajectories of equal length, got {len(T_pred)} and {len(T_gt)}")
    pairs = rpe_pairs(len(T_gt), delta, all_pairs)
    if len(pairs) == 0:
        raise EvaluationError(f"RPE with delta {delta} needs more than {delta} matched poses, got {len(T_gt)}")
    alignment = align_trajectory(T_pred, T_gt, align)
    P = alignment.apply_poses(T_pred)
    i, j = pairs[:, 0], pairs[:, 1]
    Q_rel = inv_se3(T_gt[i]) @ T_gt[j]
    P_rel = inv_se3(P[i]) @ P[j]
    E = inv_se3(Q_rel) @ P_rel
    trans = np.linalg.norm(E[:, :3, 3], axis=1)
    rot = np.degrees(rotation_angle(E[:, :3, :3]))
    return RpeResult(delta, pairs, trans, rot, alignment, _stats(trans), _stats(rot))


def trajectory_length(T_world_cam: np.ndarray) -> float:
    """Path length: sum of distances between consecutive camera centres of [N,4,4] poses."""
    T = _check_poses("T_world_cam", T_world_cam)
    return float(np.sum(np.linalg.norm(np.diff(T[:, :3, 3], axis=0), axis=1)))


def sim3_to_dict(S: Sim3) -> dict[str, Any]:
    """JSON-friendly form of a Sim(3)."""
    return {"s": S.s, "R": S.R.tolist(), "t": S.t.tolist()}


def loop_return_error(T_world_cam: np.ndarray) -> float:
    """Distance from the last camera centre to the first, as a fraction of the path length.

    For sequences that end where they started (no ground truth needed): 0 for a perfect closed loop.
    """
    T = _check_poses("T_world_cam", T_world_cam)
    length = trajectory_length(T)
    if length <= 0:
        raise EvaluationError("loop return error needs a path of positive length")
    return float(np.linalg.norm(T[-1, :3, 3] - T[0, :3, 3]) / length)


def vertical_drift(T_world_cam: np.ndarray) -> float:
    """Spread (max - min) of camera heights as a fraction of the path length, for walks at a constant height.

    Without ground truth, "up" is the mean of the cameras' -y axes (OpenCV y points down; a hand-held camera is
    upright on average, and pitch and roll wobble average out), so this works in any world frame and scale.
    """
    T = _check_poses("T_world_cam", T_world_cam)
    up = -T[:, :3, 1].mean(axis=0)
    norm = np.linalg.norm(up)
    length = trajectory_length(T)
    if norm < 1e-6 or length <= 0:
        raise EvaluationError("vertical drift needs cameras with a common up direction and a path of positive length")
    height = T[:, :3, 3] @ (up / norm)
    return float((height.max() - height.min()) / length)
