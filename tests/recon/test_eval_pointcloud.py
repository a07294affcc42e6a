"""Point-cloud accuracy / completeness / normal consistency: known answers, asymmetry, noise monotonicity."""

from __future__ import annotations

import numpy as np
import pytest

from recon.eval import EvaluationError, icp_refine, pointcloud_metrics
from recon.geometry import Sim3, so3_exp


def plane_grid(n: int = 30, spacing: float = 0.05) -> np.ndarray:
    u, v = np.meshgrid(np.arange(n) * spacing, np.arange(n) * spacing)
    return np.stack([u.ravel(), v.ravel(), np.zeros(n * n)], axis=1)


def test_identical_clouds_are_perfect() -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(400, 3))
    m = pointcloud_metrics(pts, pts)
    assert m["acc_mean"] == 0.0 and m["comp_mean"] == 0.0
    assert m["nc_mean"] == pytest.approx(1.0, abs=1e-9)


def test_offset_plane_known_answer() -> None:
    gt = plane_grid()
    pred = gt + [0.0, 0.0, 0.1]
    m = pointcloud_metrics(pred, gt)
    for k in ("acc_mean", "acc_median", "comp_mean", "comp_median"):
        assert m[k] == pytest.approx(0.1, abs=1e-12)
    # Estimated plane normals are +-z on both clouds: NC is 1 whatever their sign.
    assert m["nc_mean"] == pytest.approx(1.0, abs=1e-9)


def test_normal_consistency_is_cos_of_tilt_and_sign_free() -> None:
    gt = plane_grid(10)
    theta = np.radians(30.0)
    n_pred = np.tile([0.0, np.sin(theta), -np.cos(theta)], (len(gt), 1))  # flipped sign, tilted 30 degrees
    m = pointcloud_metrics(gt, gt, pred_normals_n3=n_pred, gt_normals_n3=np.tile([0.0, 0.0, 1.0], (len(gt), 1)))
    assert m["nc_mean"] == pytest.approx(np.cos(theta), abs=1e-12)
    assert m["nc1_median"] == pytest.approx(np.cos(theta), abs=1e-12)


def test_accuracy_and_completeness_are_asymmetric() -> None:
    gt = plane_grid()
    half = gt[gt[:, 0] < 0.7]  # the prediction covers only part of the scene
    m = pointcloud_metrics(half, gt, normals=False)
    assert m["acc_mean"] == 0.0
    assert m["comp_mean"] > 0.1
    assert "nc_mean" not in m


def test_metrics_grow_with_noise() -> None:
    rng = np.random.default_rng(1)
    gt = plane_grid()
    base = rng.normal(size=gt.shape)
    accs, ncs = [], []
    for sigma in (0.001, 0.005, 0.02):
        m = pointcloud_metrics(gt + sigma * base, gt)
        accs.append(m["acc_mean"])
        ncs.append(m["nc_mean"])
    assert accs[0] < accs[1] < accs[2]
    assert ncs[0] > ncs[1] > ncs[2]


def test_non_finite_points_dropped_and_empty_rejected() -> None:
    gt = plane_grid(5)
    pred = np.vstack([gt, [np.nan, 0.0, 0.0]])
    assert pointcloud_metrics(pred, gt, normals=False)["num_pred"] == len(gt)
    with pytest.raises(EvaluationError, match="pred_n3"):
        pointcloud_metrics(np.zeros((0, 3)), gt)


def test_icp_refine_recovers_small_rigid_offset() -> None:
    rng = np.random.default_rng(2)
    gt = rng.uniform(-1, 1, size=(2000, 3))
    gt[:, 2] = 0.3 * np.sin(3 * gt[:, 0]) * np.cos(2 * gt[:, 1])  # a non-planar surface constrains all 6 dof
    offset = Sim3(1.0, so3_exp(np.array([0.01, -0.02, 0.015])), np.array([0.02, -0.01, 0.01]))
    pred = offset.apply_points(gt)
    T_gt_pred = icp_refine(pred, gt, threshold=0.1)
    np.testing.assert_allclose(T_gt_pred, offset.inverse().matrix(), atol=1e-4)
