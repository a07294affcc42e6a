"""Camera pose from 3D-2D correspondences: RANSAC PnP seeded with a motion prior, then LM refinement."""

from __future__ import annotations

import cv2
import numpy as np


def rotation_deg(T: np.ndarray) -> float:
    """Rotation angle (degrees) of a 4x4 transform."""
    c = (np.trace(T[:3, :3]) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def T_from_rt(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """4x4 transform from an OpenCV Rodrigues vector and a translation."""
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3, 1))[0]
    T[:3, 3] = np.asarray(tvec, np.float64).reshape(3)
    return T


def rt_from_T(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rvec, tvec) column vectors of a 4x4 rigid transform."""
    rvec = cv2.Rodrigues(np.ascontiguousarray(T[:3, :3]))[0]
    return rvec.reshape(3, 1), T[:3, 3].reshape(3, 1).copy()


def solve_pnp(X_n3: np.ndarray, uv_n2: np.ndarray, K: np.ndarray, T_cam_world_guess: np.ndarray, *,
              reproj_px: float = 2.0, min_inliers: int = 12, iterations: int = 100
              ) -> tuple[np.ndarray, np.ndarray] | None:
    """T_cam_world and the inlier mask, or None when too few correspondences agree.

    The guess seeds RANSAC (useExtrinsicGuess), which keeps the solution on the right branch when the
    points are nearly planar; the final pose is refined by Levenberg-Marquardt on the inliers.
    """
    n = len(X_n3)
    if n < max(6, min_inliers):
        return None
    X = np.ascontiguousarray(X_n3, dtype=np.float64)
    uv = np.ascontiguousarray(uv_n2, dtype=np.float64)
    rvec, tvec = rt_from_T(T_cam_world_guess)
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(X, uv, K, None, rvec, tvec, useExtrinsicGuess=True,
                                                 iterationsCount=iterations, reprojectionError=reproj_px,
                                                 confidence=0.999, flags=cv2.SOLVEPNP_ITERATIVE)
    except cv2.error:
        return None
    if not ok or inl is None or len(inl) < min_inliers:
        return None
    mask = np.zeros(n, bool)
    mask[inl.reshape(-1)] = True
    rvec, tvec = cv2.solvePnPRefineLM(X[mask], uv[mask], K, None, rvec, tvec)
    T = T_from_rt(rvec, tvec)
    # Re-select inliers against the refined pose so callers drop exactly the tracks that disagree.
    Xc = X @ T[:3, :3].T + T[:3, 3]
    front = Xc[:, 2] > 1e-6
    proj = (Xc[:, :2] / np.where(front, Xc[:, 2], 1.0)[:, None]) * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    err = np.linalg.norm(proj - uv, axis=1)
    mask = front & (err < reproj_px)
    if mask.sum() < min_inliers or not np.all(np.isfinite(T)):
        return None
    return T, mask
