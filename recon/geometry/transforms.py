"""SE(3) helpers on numpy arrays (batched over leading axes).

Quaternions are xyzw (scalar last). `T_a_b` maps points in frame b into frame a.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from recon.errors import ReconError

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
"""Camera axes OpenCV (+x right, +y down, +z forward) <-> OpenGL / Blender / nerfstudio (+y up, +z backwards), its
own inverse: `T_world_cam_opengl = T_world_cam_opencv @ OPENCV_TO_OPENGL`."""


def make_se3(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Stack rotation(s) [...,3,3] and translation(s) [...,3] into 4x4 transform(s)."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    T = np.zeros(R.shape[:-2] + (4, 4))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def inv_se3(T: np.ndarray) -> np.ndarray:
    """Closed-form inverse of rigid transform(s) [...,4,4]: (R, t) -> (R^T, -R^T t)."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    Rt = np.swapaxes(R, -1, -2)
    return make_se3(Rt, -np.einsum("...ij,...j->...i", Rt, T[..., :3, 3]))


def compose_se3(*Ts: np.ndarray) -> np.ndarray:
    """Product T1 @ T2 @ ... of 4x4 transforms."""
    out = np.asarray(Ts[0], dtype=np.float64)
    for T in Ts[1:]:
        out = out @ np.asarray(T, dtype=np.float64)
    return out


def apply_transform(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points [...,3] by one 4x4 transform (rigid or similarity)."""
    T = np.asarray(T, dtype=np.float64)
    return pts @ T[:3, :3].T + T[:3, 3]


def quat_xyzw_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Rotation matrices from xyzw quaternions [...,4] (normalised first)."""
    q = np.asarray(q, dtype=np.float64)
    flat = q.reshape(-1, 4)
    R = Rotation.from_quat(flat).as_matrix()
    return R.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """xyzw quaternions [...,4] with w >= 0 from rotation matrices [...,3,3]."""
    R = np.asarray(R, dtype=np.float64)
    q = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat()
    q = np.where(q[:, 3:4] < 0, -q, q)
    return q.reshape(R.shape[:-2] + (4,))


class GeometryError(ReconError, ValueError):
    """Geometric input is malformed or degenerate (wrong shape, not a rotation, too few or collinear points)."""


def check_shape(name: str, a: np.ndarray, trailing: tuple[int, ...]) -> np.ndarray:
    """Return `a` as float64 after checking its trailing dimensions; raise GeometryError naming `name` if wrong."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < len(trailing) or a.shape[a.ndim - len(trailing):] != trailing:
        want = "[...," + ",".join(str(d) for d in trailing) + "]"
        raise GeometryError(f"{name} must have shape {want}, got {a.shape}")
    return a


def is_rotation(R: np.ndarray, atol: float = 1e-6) -> bool:
    """True if every [...,3,3] matrix is orthonormal with determinant +1 (within `atol`)."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        return False
    # np.allclose's test (|a - b| <= atol + rtol |b|, rtol 1e-5) written out: allclose's generality cost ~0.3 ms
    # per call, and every Sim3 runs this check (thousands per loop verification's RANSAC).
    I = np.eye(3)
    RtR = np.swapaxes(R, -1, -2) @ R
    return bool(np.all(np.abs(RtR - I) <= atol + 1e-5 * I) and np.all(np.abs(np.linalg.det(R) - 1.0) <= atol + 1e-5))


def orthonormalise(R: np.ndarray) -> np.ndarray:
    """The orthonormal matrix nearest to a near-rotation (U V^T of its SVD): what float round-off leaves of a
    rotation (a float32 backend, a solver) passes `is_rotation` again. No reflection fix: the input is a rotation."""
    U, _, Vt = np.linalg.svd(np.asarray(R, np.float64))
    return U @ Vt


def quat_xyzw_to_wxyz(q_xyzw: np.ndarray) -> np.ndarray:
    """Reorder quaternions [...,4] from recon's xyzw (scalar last) to wxyz (scalar first: evo, PyTorch3D)."""
    q = check_shape("q_xyzw", q_xyzw, (4,))
    return np.concatenate([q[..., 3:4], q[..., 0:3]], axis=-1)


def quat_wxyz_to_xyzw(q_wxyz: np.ndarray) -> np.ndarray:
    """Reorder quaternions [...,4] from wxyz (scalar first) to recon's xyzw (scalar last)."""
    q = check_shape("q_wxyz", q_wxyz, (4,))
    return np.concatenate([q[..., 1:4], q[..., 0:1]], axis=-1)


def hat(w: np.ndarray) -> np.ndarray:
    """Skew-symmetric matrices [...,3,3] with hat(w) @ v == cross(w, v)."""
    w = check_shape("w", w, (3,))
    W = np.zeros(w.shape[:-1] + (3, 3))
    W[..., 0, 1], W[..., 0, 2] = -w[..., 2], w[..., 1]
    W[..., 1, 0], W[..., 1, 2] = w[..., 2], -w[..., 0]
    W[..., 2, 0], W[..., 2, 1] = -w[..., 1], w[..., 0]
    return W


def so3_exp(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrices [...,3,3] from axis-angle vectors [...,3] (angle = norm, radians)."""
    rotvec = check_shape("rotvec", rotvec, (3,))
    R = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix()
    return R.reshape(rotvec.shape[:-1] + (3, 3))


def so3_log(R: np.ndarray) -> np.ndarray:
    """Axis-angle vectors [...,3] (angle in [0, pi]) of rotation matrices [...,3,3].

    Uses scipy's quaternion path, which stays accurate near 0 and pi where arccos((tr-1)/2) is not.
    """
    R = check_shape("R", R, (3, 3))
    rv = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec()
    return rv.reshape(R.shape[:-2] + (3,))


def rotation_angle(R: np.ndarray) -> np.ndarray:
    """Rotation angle in radians [...] of rotation matrices [...,3,3] (norm of so3_log)."""
    return np.linalg.norm(so3_log(R), axis=-1)


def _so3_left_jacobian_coeffs(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with V = I + a*W + b*W^2 for unit-less W = hat(omega); Taylor series below 1e-4 rad."""
    small = theta < 1e-4
    th = np.where(small, 1.0, theta)
    a = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(th)) / th**2)
    b = np.where(small, 1.0 / 6.0 - theta**2 / 120.0, (th - np.sin(th)) / th**3)
    return a, b


def se3_exp(xi: np.ndarray) -> np.ndarray:
    """4x4 transforms [...,4,4] from twists xi = (rho_xyz, omega_xyz) [...,6] (translation part first)."""
    xi = check_shape("xi", xi, (6,))
    rho, omega = xi[..., :3], xi[..., 3:]
    theta = np.linalg.norm(omega, axis=-1)
    a, b = _so3_left_jacobian_coeffs(theta)
    W = hat(omega)
    V = np.eye(3) + a[..., None, None] * W + b[..., None, None] * (W @ W)
    return make_se3(so3_exp(omega), np.einsum("...ij,...j->...i", V, rho))


def se3_log(T: np.ndarray) -> np.ndarray:
    """Twists (rho_xyz, omega_xyz) [...,6] of 4x4 rigid transforms [...,4,4]; inverse of se3_exp."""
    T = check_shape("T", T, (4, 4))
    omega = so3_log(T[..., :3, :3])
    theta = np.linalg.norm(omega, axis=-1)
    W = hat(omega)
    small = theta < 1e-4
    th = np.where(small, 1.0, theta)
    # V^-1 = I - W/2 + c W^2 with c = (1 - theta sin(theta) / (2 (1 - cos(theta)))) / theta^2.
    c = np.where(small, 1.0 / 12.0 + theta**2 / 720.0,
                 (1.0 - th * np.sin(th) / (2.0 * (1.0 - np.cos(th)))) / th**2)
    V_inv = np.eye(3) - 0.5 * W + c[..., None, None] * (W @ W)
    rho = np.einsum("...ij,...j->...i", V_inv, T[..., :3, 3])
    return np.concatenate([rho, omega], axis=-1)
