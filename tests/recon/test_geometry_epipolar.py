"""Two-view models: the same answers on OpenCV 4 and 5, degenerate pairs included."""

from __future__ import annotations

import numpy as np

from recon.geometry.epipolar import consistent_matches, essential_ransac

K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])


def _project(X: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    x = (X @ R.T + t) @ K.T
    return x[:, :2] / x[:, 2:]


def _scene(n: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(-2, 2, (n, 2)), rng.uniform(3, 8, n)]


def test_a_moving_camera_gets_its_essential_matrix_and_loses_the_outliers() -> None:
    X = _scene()
    c, s = np.cos(0.1), np.sin(0.1)
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    p0, p1 = _project(X, np.eye(3), np.zeros(3)), _project(X, R, np.array([0.5, 0.0, 0.1]))
    p1[:20] += np.random.default_rng(1).uniform(20, 40, (20, 2))  # 10 % gross outliers
    model = essential_ransac(p0, p1, K, 1.0)
    assert model is not None
    E, inliers = model
    assert E.shape == (3, 3)
    assert not inliers[:20].any() and inliers[20:].mean() > 0.95
    x0 = np.c_[p0, np.ones(len(p0))] @ np.linalg.inv(K).T
    x1 = np.c_[p1, np.ones(len(p1))] @ np.linalg.inv(K).T
    assert np.abs(np.sum(x1[20:] * (x0[20:] @ E.T), axis=1)).max() < 1e-2


def test_the_same_view_twice_keeps_its_matches_and_drops_the_wrong_ones() -> None:
    """A revisit of the very view (zero parallax): OpenCV 5's five-point solver raises here, 4 returns some E."""
    p = _project(_scene(), np.eye(3), np.zeros(3))
    q = p.copy()
    q[:15] += np.random.default_rng(2).uniform(15, 30, (15, 2))
    model = essential_ransac(p, p, K, 1.0)
    assert model is None or model[1].all()
    kept = consistent_matches(p, q, K, 2.0)
    assert kept[15:].all()  # the revisit is never lost
    if essential_ransac(p, q, K, 2.0) is None:  # OpenCV 5: the homography decides, and it is exact here
        assert not kept[:15].any()


def test_too_few_points_are_no_model() -> None:
    p = _project(_scene(6), np.eye(3), np.zeros(3))
    assert essential_ransac(p, p + 1.0, K, 1.0) is None
    assert not consistent_matches(p, p + 1.0, K, 1.0).any()
