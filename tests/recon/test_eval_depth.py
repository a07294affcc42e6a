"""Depth AbsRel / delta<1.25 with median scale alignment and valid masks."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import ConfigError
from recon.eval import EvaluationError, depth_metrics


def gt_depth() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.5, 5.0, size=(2, 12, 16))


def test_identical_is_perfect() -> None:
    gt = gt_depth()
    m = depth_metrics(gt, gt)
    assert m["abs_rel"] == 0.0 and m["delta_1_25"] == 1.0 and m["scale"] == 1.0
    assert m["num_valid"] == gt.size


def test_median_alignment_removes_global_scale() -> None:
    gt = gt_depth()
    m = depth_metrics(3.0 * gt, gt)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert m["scale"] == pytest.approx(1 / 3)
    m = depth_metrics(3.0 * gt, gt, align="none")
    assert m["abs_rel"] == pytest.approx(2.0)
    assert m["delta_1_25"] == 0.0


def test_known_answer_without_alignment() -> None:
    gt = np.ones((4, 4))
    pred = gt.copy()
    pred[:2] = 1.2  # half the pixels 20% too far: abs_rel 0.1, all within 1.25
    m = depth_metrics(pred, gt, align="none")
    assert m["abs_rel"] == pytest.approx(0.1)
    assert m["delta_1_25"] == 1.0
    pred[:2] = 1.3
    assert depth_metrics(pred, gt, align="none")["delta_1_25"] == 0.5


def test_invalid_pixels_are_ignored() -> None:
    gt = gt_depth()
    pred = gt.copy()
    gt[0, :3] = 0.0  # no ground truth
    pred[0, :3] = 100.0
    gt[1, 5] = np.nan
    pred[1, 6] = -1.0  # unusable prediction where ground truth is valid: excluded and counted
    mask = np.ones(gt.shape, dtype=bool)
    mask[1, 0] = False
    pred[1, 0] = 50.0
    m = depth_metrics(pred, gt, mask)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert m["num_invalid_pred"] == 16
    assert m["num_valid"] == gt.size - 3 * 16 - 16 - 16 - 16
    m = depth_metrics(pred, gt, max_depth=2.0)
    assert m["num_valid"] < gt.size / 2


def test_errors() -> None:
    gt = gt_depth()
    with pytest.raises(EvaluationError, match="shape"):
        depth_metrics(gt[0], gt)
    with pytest.raises(EvaluationError, match="no pixel"):
        depth_metrics(gt, np.zeros_like(gt))
    with pytest.raises(ConfigError):
        depth_metrics(gt, gt, align="mean")  # type: ignore[arg-type]
