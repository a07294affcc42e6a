"""Depth metrics with median scale alignment: AbsRel and delta < 1.25.

As in the VGGT-family `video_depth` / `monodepth` protocols (StreamVGGT@3e28c5c src/eval/video_depth/tools.py,
option `--align scale`): an up-to-scale prediction is multiplied by median(gt) / median(pred) over the valid
pixels before scoring. Pass a stack [N,H,W] for one scale per sequence, or call per frame for per-frame scales.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np

from recon.errors import ConfigError
from recon.eval.trajectory import EvaluationError

logger = logging.getLogger(__name__)


def depth_metrics(
    pred_depth: np.ndarray,
    gt_depth: np.ndarray,
    valid_mask: np.ndarray | None = None,
    *,
    align: Literal["median", "none"] = "median",
    min_depth: float = 1e-3,
    max_depth: float | None = None,
) -> dict[str, Any]:
    """AbsRel = mean |s·d - d*| / d* and delta_1_25 = fraction with max(s·d / d*, d* / (s·d)) < 1.25.

    Args:
        pred_depth, gt_depth: depth maps of equal shape ([H,W] or [N,H,W]).
        valid_mask: optional bool mask of the same shape, ANDed with the automatic one.
        align: "median" scale alignment or "none" (metric predictions).
        min_depth, max_depth: ground-truth range counted as valid (the reference uses max 70 m outdoors).

    Pixels are valid where the ground truth is finite and within range, and the prediction is finite and > 0
    (a non-positive prediction has no scale-invariant meaning; such pixels are counted in `num_invalid_pred`).

    Returns:
        abs_rel, delta_1_25, scale (applied to the prediction), num_valid, num_invalid_pred.
    """
    if align not in ("median", "none"):
        raise ConfigError(f"depth align must be 'median' or 'none', got {align!r}")
    pred = np.asarray(pred_depth, dtype=np.float64)
    gt = np.asarray(gt_depth, dtype=np.float64)
    if pred.shape != gt.shape:
        raise EvaluationError(f"predicted depth {pred.shape} and ground truth {gt.shape} differ in shape")
    valid_gt = np.isfinite(gt) & (gt > min_depth)
    if max_depth is not None:
        valid_gt &= gt < max_depth
    if valid_mask is not None:
        mask = np.asarray(valid_mask, dtype=bool)
        if mask.shape != gt.shape:
            raise EvaluationError(f"valid_mask {mask.shape} does not match depth {gt.shape}")
        valid_gt &= mask
    good_pred = np.isfinite(pred) & (pred > 0)
    valid = valid_gt & good_pred
    num_invalid_pred = int(np.count_nonzero(valid_gt & ~good_pred))
    if num_invalid_pred:
        logger.debug("%d pixels with valid ground truth have no usable prediction", num_invalid_pred)
    if not valid.any():
        raise EvaluationError("no pixel has both a valid ground-truth depth and a positive finite prediction")
    d_pred, d_gt = pred[valid], gt[valid]
    scale = float(np.median(d_gt) / np.median(d_pred)) if align == "median" else 1.0
    d_pred = scale * d_pred
    ratio = np.maximum(d_pred / d_gt, d_gt / d_pred)
    return {
        "abs_rel": float(np.mean(np.abs(d_pred - d_gt) / d_gt)),
        "delta_1_25": float(np.mean(ratio < 1.25)),
        "scale": scale,
        "num_valid": int(d_gt.size),
        "num_invalid_pred": num_invalid_pred,
    }
