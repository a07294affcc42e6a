"""Sim(3) algebra and Umeyama alignment: exact recovery, evo agreement, degenerate input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from recon.geometry import GeometryError, Sim3, make_se3, umeyama


def _random_sim3(rng: np.random.Generator) -> Sim3:
    R = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    return Sim3(float(np.exp(rng.uniform(-2, 2))), R, rng.normal(scale=5, size=3))


def test_compose_inverse_matrix_consistency() -> None:
    rng = np.random.default_rng(0)
    a, b = _random_sim3(rng), _random_sim3(rng)
    np.testing.assert_allclose((a @ b).matrix(), a.matrix() @ b.matrix(), atol=1e-10)
    np.testing.assert_allclose((a @ a.inverse()).matrix(), np.eye(4), atol=1e-10)
    c = Sim3.from_matrix(a.matrix())
    assert c.s == pytest.approx(a.s, rel=1e-12)
    np.testing.assert_allclose(c.R, a.R, atol=1e-12)
    pts = rng.normal(size=(7, 3))
    np.testing.assert_allclose((a @ b).apply_points(pts), a.apply_points(b.apply_points(pts)), atol=1e-10)
    np.testing.assert_allclose(a.inverse().apply_points(a.apply_points(pts)), pts, atol=1e-10)


def test_apply_poses_formula() -> None:
    rng = np.random.default_rng(1)
    S = _random_sim3(rng)
    R_c = Rotation.random(3, random_state=5).as_matrix()
    t_c = rng.normal(size=(3, 3))
    T_out = S.apply_poses(make_se3(R_c, t_c))
    np.testing.assert_allclose(T_out[:, :3, :3], S.R @ R_c, atol=1e-12)
    np.testing.assert_allclose(T_out[:, :3, 3], S.s * t_c @ S.R.T + S.t, atol=1e-12)
    np.testing.assert_allclose(T_out[:, 3], np.tile([0, 0, 0, 1.0], (3, 1)))
    # Camera centres move exactly like points.
    np.testing.assert_allclose(T_out[:, :3, 3], S.apply_points(t_c), atol=1e-12)


def test_sim3_validation() -> None:
    with pytest.raises(GeometryError, match="scale"):
        Sim3(0.0, np.eye(3), np.zeros(3))
    with pytest.raises(GeometryError, match="rotation"):
        Sim3(1.0, np.diag([1.0, 1.0, -1.0]), np.zeros(3))
    with pytest.raises(GeometryError):
        Sim3.from_matrix(np.diag([1.0, 1.0, -1.0, 1.0]))
    assert Sim3.identity().apply_points(np.ones(3)).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("with_scale", [True, False])
def test_umeyama_recovers_random_transform(seed: int, with_scale: bool) -> None:
    rng = np.random.default_rng(seed)
    S = _random_sim3(rng)
    if not with_scale:
        S = Sim3(1.0, S.R, S.t)
    src = rng.normal(size=(30, 3))
    s, R, t = umeyama(src, S.apply_points(src), with_scale=with_scale)
    assert s == pytest.approx(S.s, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(R, S.R, atol=1e-9)
    np.testing.assert_allclose(t, S.t, atol=1e-9 * max(1.0, np.abs(S.t).max()))


def test_umeyama_se3_ignores_scale_and_reflection() -> None:
    rng = np.random.default_rng(7)
    src = rng.normal(size=(20, 3))
    s, R, _ = umeyama(src, 3.0 * src, with_scale=False)
    assert s == 1.0
    np.testing.assert_allclose(R, np.eye(3), atol=1e-12)
    # A mirrored target must still give a proper rotation.
    _, R, _ = umeyama(src, src * [1.0, 1.0, -1.0], with_scale=True)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_umeyama_weights_ignore_zero_weight_outliers() -> None:
    rng = np.random.default_rng(8)
    S = _random_sim3(rng)
    src = rng.normal(size=(25, 3))
    dst = S.apply_points(src)
    dst[:5] += rng.normal(scale=10.0, size=(5, 3))
    w = np.ones(25)
    w[:5] = 0.0
    s, R, t = umeyama(src, dst, with_scale=True, weights_n=w)
    assert s == pytest.approx(S.s, rel=1e-9)
    np.testing.assert_allclose(R, S.R, atol=1e-9)
    s_unw, _, _ = umeyama(src, dst, with_scale=True)
    assert abs(s_unw - S.s) > 1e-3  # the outliers do matter without weights
    # Uniform weights equal the unweighted solution.
    np.testing.assert_allclose(umeyama(src, dst, True, np.full(25, 4.0))[1], umeyama(src, dst, True)[1], atol=1e-12)


def test_umeyama_matches_evo() -> None:
    from evo.core import geometry as evo_geometry

    rng = np.random.default_rng(9)
    src = rng.normal(size=(40, 3))
    dst = _random_sim3(rng).apply_points(src) + rng.normal(scale=0.05, size=(40, 3))
    for with_scale in (True, False):
        R_e, t_e, s_e = evo_geometry.umeyama_alignment(src.T, dst.T, with_scale)
        s, R, t = umeyama(src, dst, with_scale)
        assert s == pytest.approx(s_e, rel=1e-12)
        np.testing.assert_allclose(R, R_e, atol=1e-12)
        np.testing.assert_allclose(t, t_e, atol=1e-10)


def test_umeyama_degenerate_inputs() -> None:
    line = np.outer(np.arange(10.0), [1.0, 2.0, 0.5])
    with pytest.raises(GeometryError, match="collinear"):
        umeyama(line, line + 1.0, with_scale=True)
    with pytest.raises(GeometryError, match="at least 3"):
        umeyama(np.zeros((2, 3)), np.zeros((2, 3)), with_scale=False)
    with pytest.raises(GeometryError, match="equal shape"):
        umeyama(np.zeros((4, 3)), np.zeros((5, 3)), with_scale=False)
    with pytest.raises(GeometryError, match="NaN"):
        umeyama(np.full((4, 3), np.nan), np.zeros((4, 3)), with_scale=False)
    with pytest.raises(GeometryError, match="weights"):
        umeyama(np.eye(3), np.eye(3), with_scale=False, weights_n=np.array([1.0, -1.0, 1.0]))


def test_umeyama_non_strict_collinear_still_fits_positions() -> None:
    line = np.outer(np.arange(10.0), [1.0, 2.0, 0.5])
    target = Sim3(2.0, Rotation.from_rotvec([0.1, 0.2, 0.3]).as_matrix(), np.array([1.0, -1.0, 0.0]))
    s, R, t = umeyama(line, target.apply_points(line), with_scale=True, strict=False)
    assert s == pytest.approx(2.0, rel=1e-9)
    np.testing.assert_allclose(Sim3(s, R, t).apply_points(line), target.apply_points(line), atol=1e-9)
