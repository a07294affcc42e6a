"""Similarity transforms Sim(3) as (s, R, t): x -> s·R·x + t.

Used to put an up-to-scale reconstruction into a reference frame (trajectory evaluation, window registration).
Applied to a camera-to-world pose `T_world_cam` = (R_c, t_c), Sim(3) gives (R·R_c, s·R·t_c + t): the camera
rotation is not scaled, its centre is. A Sim(3) with s = 1 is an SE(3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.geometry.transforms import GeometryError, check_shape, is_rotation, make_se3


@dataclass(frozen=True)
class Sim3:
    """A similarity transform `x_b = s·R·x_a + t` (maps frame a into frame b, like `T_b_a`).

    Attributes:
        s: positive scale.
        R: 3x3 rotation (det +1).
        t: translation, shape [3].
    """

    s: float
    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        s = float(self.s)
        if not np.isfinite(s) or s <= 0.0:
            raise GeometryError(f"Sim3 scale must be positive and finite, got {self.s}")
        R = check_shape("Sim3.R", self.R, (3, 3))
        t = check_shape("Sim3.t", self.t, (3,))
        if R.shape != (3, 3) or t.shape != (3,):
            raise GeometryError(f"Sim3 expects R 3x3 and t [3], got {R.shape} and {t.shape}")
        if not is_rotation(R):
            raise GeometryError(f"Sim3.R is not a rotation (R^T R != I or det != 1): {R.tolist()}")
        object.__setattr__(self, "s", s)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)

    @classmethod
    def identity(cls) -> Sim3:
        return cls(1.0, np.eye(3), np.zeros(3))

    @classmethod
    def from_matrix(cls, M_44: np.ndarray, atol: float = 1e-6) -> Sim3:
        """Parse a 4x4 [[s·R, t], [0, 1]]; the scale is the cube root of det(s·R)."""
        M = check_shape("M_44", M_44, (4, 4))
        if M.shape != (4, 4):
            raise GeometryError(f"Sim3.from_matrix expects one 4x4 matrix, got {M.shape}")
        if not np.allclose(M[3], [0.0, 0.0, 0.0, 1.0], atol=atol):
            raise GeometryError(f"last row of a Sim(3) matrix must be [0 0 0 1], got {M[3].tolist()}")
        det = np.linalg.det(M[:3, :3])
        if det <= 0.0:
            raise GeometryError(f"Sim(3) linear part must have positive determinant, got {det}")
        s = float(np.cbrt(det))
        return cls(s, M[:3, :3] / s, M[:3, 3].copy())

    @classmethod
    def from_se3(cls, T_44: np.ndarray) -> Sim3:
        """Sim(3) with unit scale from a rigid 4x4 transform."""
        T = check_shape("T_44", T_44, (4, 4))
        return cls(1.0, T[:3, :3], T[:3, 3])

    def matrix(self) -> np.ndarray:
        """4x4 [[s·R, t], [0, 1]]."""
        return make_se3(self.s * self.R, self.t)

    def inverse(self) -> Sim3:
        """x_a = (1/s)·R^T·(x_b - t)."""
        Rt = self.R.T
        return Sim3(1.0 / self.s, Rt, -(Rt @ self.t) / self.s)

    def __matmul__(self, other: Sim3) -> Sim3:
        """Composition: (self @ other)(x) = self(other(x))."""
        return Sim3(self.s * other.s, self.R @ other.R, self.s * (self.R @ other.t) + self.t)

    def apply_points(self, pts_n3: np.ndarray) -> np.ndarray:
        """Map points [...,3]."""
        pts = check_shape("pts", pts_n3, (3,))
        return self.s * (pts @ self.R.T) + self.t

    def apply_poses(self, T_world_cam: np.ndarray) -> np.ndarray:
        """Map camera-to-world poses [...,4,4] into the target frame: rotation R·R_c, centre s·R·t_c + t.

        The result stays a rigid transform (unit scale); only camera centres move with the scale.
        """
        T = check_shape("T_world_cam", T_world_cam, (4, 4))
        R_out = np.einsum("ij,...jk->...ik", self.R, T[..., :3, :3])
        t_out = self.s * np.einsum("ij,...j->...i", self.R, T[..., :3, 3]) + self.t
        return make_se3(R_out, t_out)
