"""SE(3) helpers on numpy arrays (batched over leading axes).

Quaternions are xyzw (scalar last). `T_a_b` maps points in frame b into frame a.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


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
