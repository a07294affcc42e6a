"""Point-cloud reconstruction metrics: accuracy, completeness, normal consistency.

Protocol of the VGGT-family `mv_recon` evaluation (StreamVGGT@3e28c5c src/eval/mv_recon/utils.py; see
../shared/reference/vggt_family.md §5.2), written from its description:
- Acc  = distance from each predicted point to its nearest ground-truth point (mean and median);
- Comp = distance from each ground-truth point to its nearest predicted point;
- NC1  = |n_pred · n_gt[nn]| over predicted points, NC2 = the same over ground-truth points, NC = (NC1 + NC2) / 2.
Normals are estimated with open3d (k nearest neighbours, unoriented, hence the absolute value). Both clouds must
already be in the same frame and scale; `icp_refine` is the reference's optional final point-to-point ICP.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from recon.eval.trajectory import EvaluationError
from recon.geometry.transforms import check_shape
from recon.utils.imports import require_package

logger = logging.getLogger(__name__)


def _points(name: str, pts: np.ndarray, min_points: int = 1) -> np.ndarray:
    pts = check_shape(name, pts, (3,)).reshape(-1, 3)
    finite = np.all(np.isfinite(pts), axis=1)
    if not finite.all():
        logger.warning("%s: dropping %d non-finite points", name, int((~finite).sum()))
        pts = pts[finite]
    if len(pts) < min_points:
        raise EvaluationError(f"{name} needs at least {min_points} finite points, got {len(pts)}")
    return pts


def estimate_normals(pts_n3: np.ndarray, knn: int = 30) -> np.ndarray:
    """Unit normals [N,3] (unoriented) from a PCA of each point's k nearest neighbours, via open3d."""
    o3d = require_package("open3d")
    pts = _points("pts_n3", pts_n3, min_points=3)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    pcd.estimate_normals(search_param=o3d.geometry.KDTreeSearchParamKNN(knn=knn))
    return np.asarray(pcd.normals, dtype=np.float64)


def icp_refine(
    pred_n3: np.ndarray, gt_n3: np.ndarray, threshold: float = 0.1, init_44: np.ndarray | None = None
) -> np.ndarray:
    """4x4 T_gt_pred from open3d point-to-point ICP (the reference runs it from identity with threshold 0.1)."""
    o3d = require_package("open3d")
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_points("pred_n3", pred_n3)))
    dst = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(_points("gt_n3", gt_n3)))
    init = np.eye(4) if init_44 is None else np.asarray(init_44, dtype=np.float64)
    reg = o3d.pipelines.registration.registration_icp(
        src, dst, threshold, init, o3d.pipelines.registration.TransformationEstimationPointToPoint()
    )
    logger.debug("ICP fitness %.3f, inlier rmse %.4g", reg.fitness, reg.inlier_rmse)
    return np.asarray(reg.transformation, dtype=np.float64)


def pointcloud_metrics(
    pred_n3: np.ndarray,
    gt_n3: np.ndarray,
    *,
    pred_normals_n3: np.ndarray | None = None,
    gt_normals_n3: np.ndarray | None = None,
    normals: bool = True,
    knn: int = 30,
) -> dict[str, Any]:
    """Acc / Comp / NC of a predicted cloud against ground truth, both [N,3] in the same frame.

    Args:
        pred_normals_n3, gt_normals_n3: normals to use instead of estimating them (any sign).
        normals: set False to skip normal consistency (no open3d call).
        knn: neighbours for normal estimation.

    Returns:
        acc_mean, acc_median, comp_mean, comp_median, and with normals nc1_mean, nc1_median, nc2_mean,
        nc2_median, nc_mean, nc_median (NC = average of the two directions), plus num_pred and num_gt.
    """
    pred = _points("pred_n3", pred_n3)
    gt = _points("gt_n3", gt_n3)
    d_pred_to_gt, nn_in_gt = cKDTree(gt).query(pred, k=1)
    d_gt_to_pred, nn_in_pred = cKDTree(pred).query(gt, k=1)
    out: dict[str, Any] = {
        "acc_mean": float(np.mean(d_pred_to_gt)),
        "acc_median": float(np.median(d_pred_to_gt)),
        "comp_mean": float(np.mean(d_gt_to_pred)),
        "comp_median": float(np.median(d_gt_to_pred)),
        "num_pred": int(len(pred)),
        "num_gt": int(len(gt)),
    }
    if not normals:
        return out
    n_pred = estimate_normals(pred, knn) if pred_normals_n3 is None else _unit("pred_normals_n3", pred_normals_n3)
    n_gt = estimate_normals(gt, knn) if gt_normals_n3 is None else _unit("gt_normals_n3", gt_normals_n3)
    if len(n_pred) != len(pred) or len(n_gt) != len(gt):
        raise EvaluationError("normals must have one row per (finite) point")
    nc1 = np.abs(np.sum(n_pred * n_gt[nn_in_gt], axis=1))
    nc2 = np.abs(np.sum(n_gt * n_pred[nn_in_pred], axis=1))
    out.update({
        "nc1_mean": float(np.mean(nc1)),
        "nc1_median": float(np.median(nc1)),
        "nc2_mean": float(np.mean(nc2)),
        "nc2_median": float(np.median(nc2)),
        "nc_mean": float((np.mean(nc1) + np.mean(nc2)) / 2),
        "nc_median": float((np.median(nc1) + np.median(nc2)) / 2),
    })
    return out


def _unit(name: str, n: np.ndarray) -> np.ndarray:
    n = check_shape(name, n, (3,)).reshape(-1, 3)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    if np.any(norm == 0) or not np.all(np.isfinite(norm)):
        raise EvaluationError(f"{name} has zero or non-finite normals")
    return n / norm
