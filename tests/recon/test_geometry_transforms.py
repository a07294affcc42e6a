"""SE(3)/SO(3) helpers: round trips, known answers, quaternion conventions, malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from recon.geometry import (
    GeometryError,
    apply_transform,
    compose_se3,
    hat,
    inv_se3,
    is_rotation,
    make_se3,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_rotmat,
    quat_xyzw_to_wxyz,
    rotation_angle,
    rotmat_to_quat_xyzw,
    se3_exp,
    se3_log,
    so3_exp,
    so3_log,
)


def _random_se3(rng: np.random.Generator, n: int) -> np.ndarray:
    return make_se3(Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix(), rng.normal(size=(n, 3)))


def test_quaternion_order_is_xyzw_known_answer() -> None:
    # 90 degrees about z: xyzw = (0, 0, sin45, cos45); maps x to y.
    q_xyzw = np.array([0.0, 0.0, np.sqrt(0.5), np.sqrt(0.5)])
    R = quat_xyzw_to_rotmat(q_xyzw)
    np.testing.assert_allclose(R @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(rotmat_to_quat_xyzw(R), q_xyzw, atol=1e-12)
    q_wxyz = quat_xyzw_to_wxyz(q_xyzw)
    np.testing.assert_allclose(q_wxyz, [np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)])
    np.testing.assert_array_equal(quat_wxyz_to_xyzw(q_wxyz), q_xyzw)


def test_quaternion_reorder_batched_round_trip() -> None:
    q = np.random.default_rng(0).normal(size=(5, 2, 4))
    np.testing.assert_array_equal(quat_wxyz_to_xyzw(quat_xyzw_to_wxyz(q)), q)
    with pytest.raises(GeometryError):
        quat_xyzw_to_wxyz(np.zeros(3))


def test_inverse_and_compose() -> None:
    T = _random_se3(np.random.default_rng(1), 4)
    np.testing.assert_allclose(compose_se3(T, inv_se3(T)), np.broadcast_to(np.eye(4), T.shape), atol=1e-12)
    p = np.array([0.3, -1.0, 2.0])
    np.testing.assert_allclose(apply_transform(compose_se3(T[0], T[1]), p),
                               apply_transform(T[0], apply_transform(T[1], p)), atol=1e-12)


def test_hat_is_cross_product() -> None:
    rng = np.random.default_rng(2)
    w, v = rng.normal(size=3), rng.normal(size=3)
    np.testing.assert_allclose(hat(w) @ v, np.cross(w, v), atol=1e-15)


def test_so3_known_answer_and_round_trip() -> None:
    R = so3_exp(np.array([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(R, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    rng = np.random.default_rng(3)
    rv = rng.normal(size=(50, 3))
    rv *= (rng.uniform(0, np.pi - 1e-3, size=50) / np.linalg.norm(rv, axis=1))[:, None]
    np.testing.assert_allclose(so3_log(so3_exp(rv)), rv, atol=1e-10)
    np.testing.assert_allclose(rotation_angle(so3_exp(rv)), np.linalg.norm(rv, axis=1), atol=1e-10)


def test_rotation_angle_accurate_near_zero() -> None:
    # arccos((tr - 1) / 2) would lose this angle entirely in float64.
    assert rotation_angle(so3_exp(np.array([1e-9, 0.0, 0.0]))) == pytest.approx(1e-9, rel=1e-6)


@pytest.mark.parametrize("scale", [0.0, 1e-7, 1e-3, 1.0, 3.0])
def test_se3_exp_log_round_trip(scale: float) -> None:
    rng = np.random.default_rng(4)
    xi = rng.normal(size=(20, 6))
    xi[:, 3:] *= scale / np.linalg.norm(xi[:, 3:], axis=1, keepdims=True) if scale else 0.0
    T = se3_exp(xi)
    assert is_rotation(T[..., :3, :3])
    np.testing.assert_allclose(se3_log(T), xi, atol=1e-9)


def test_se3_exp_known_answer_screw_motion() -> None:
    # Rotation by pi/2 about z with rho = (0, 0, 1): pure z translation along the axis plus rotation.
    T = se3_exp(np.array([0.0, 0.0, 1.0, 0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(T[:3, 3], [0.0, 0.0, 1.0], atol=1e-12)
    # rho = (1, 0, 0): V @ rho = (sin t / t, (1 - cos t) / t, 0) for theta = t about z.
    t = np.pi / 2
    T = se3_exp(np.array([1.0, 0.0, 0.0, 0.0, 0.0, t]))
    np.testing.assert_allclose(T[:3, 3], [np.sin(t) / t, (1 - np.cos(t)) / t, 0.0], atol=1e-12)


def test_se3_exp_is_matrix_exponential() -> None:
    from scipy.linalg import expm

    xi = np.array([0.2, -0.4, 1.0, 0.3, -0.2, 0.5])
    M = np.zeros((4, 4))
    M[:3, :3] = hat(xi[3:])
    M[:3, 3] = xi[:3]
    np.testing.assert_allclose(se3_exp(xi), expm(M), atol=1e-12)


def test_is_rotation_rejects_reflection_and_scale() -> None:
    assert is_rotation(np.eye(3))
    assert not is_rotation(np.diag([1.0, 1.0, -1.0]))
    assert not is_rotation(2 * np.eye(3))
    assert not is_rotation(np.eye(4))


def test_malformed_shapes_raise_geometry_error() -> None:
    with pytest.raises(GeometryError, match="rotvec"):
        so3_exp(np.zeros(4))
    with pytest.raises(GeometryError, match=r"\[\.\.\.,4,4\]"):
        se3_log(np.eye(3))
    assert issubclass(GeometryError, ValueError)
