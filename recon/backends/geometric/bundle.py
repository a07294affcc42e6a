"""Local bundle adjustment for monocular VO: scipy sparse least squares over a window of keyframes.

Cameras are world-to-camera (Rodrigues vector, translation), points are world xyz; residuals are pixel
reprojection errors with a Huber loss. The Jacobian is analytic and sparse (each residual touches one camera
and one point): one pass over the observations, where finite differences over the same sparsity cost about ten
residual evaluations, which made the keyframe steps of a live stream several times slower than the others.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import coo_matrix
from scipy.spatial.transform import Rotation

logger = logging.getLogger(__name__)


def _project(cams_c6: np.ndarray, X_p3: np.ndarray, obs_cam: np.ndarray, obs_pt: np.ndarray,
             K: np.ndarray, focal_scale: float = 1.0) -> np.ndarray:
    R = Rotation.from_rotvec(cams_c6[:, :3]).as_matrix()
    Xc = np.einsum("mij,mj->mi", R[obs_cam], X_p3[obs_pt]) + cams_c6[obs_cam, 3:]
    z = np.maximum(Xc[:, 2], 1e-6)
    return Xc[:, :2] / z[:, None] * (focal_scale * np.array([K[0, 0], K[1, 1]])) + [K[0, 2], K[1, 2]]


def _skew(v_n3: np.ndarray) -> np.ndarray:
    S = np.zeros(v_n3.shape[:-1] + (3, 3))
    S[..., 0, 1], S[..., 0, 2], S[..., 1, 2] = -v_n3[..., 2], v_n3[..., 1], -v_n3[..., 0]
    return S - np.swapaxes(S, -1, -2)


def _left_jacobian(w_n3: np.ndarray) -> np.ndarray:
    """SO(3) left Jacobians: d exp(w) y / dw = -[exp(w) y]_x J_l(w)."""
    th = np.linalg.norm(w_n3, axis=-1)[..., None, None]
    W = _skew(w_n3)
    small = th < 1e-6
    ths = np.where(small, 1.0, th)
    a = np.where(small, 0.5, (1 - np.cos(ths)) / ths**2)
    b = np.where(small, 1 / 6, (ths - np.sin(ths)) / ths**3)
    return np.eye(3) + a * W + b * (W @ W)


def bundle_adjust(T_cw_c44: np.ndarray, fixed_c: np.ndarray, X_p3: np.ndarray, obs_cam: np.ndarray,
                  obs_pt: np.ndarray, obs_uv: np.ndarray, K: np.ndarray, *, huber_px: float = 1.5,
                  max_nfev: int = 20, scale_pair: tuple[int, int] | None = None, refine_focal: bool = False,
                  dense: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Refined (T_cw [C,4,4], X [P,3], per-observation reprojection error [M], focal scale).

    Args:
        T_cw_c44: world-to-camera poses of the window's keyframes.
        fixed_c: True for keyframes held constant (one fixes the rigid gauge, two also fix the scale).
        scale_pair: (i, j): keep the distance between camera centres i and j as it is, a soft scale gauge
            that, unlike a second fixed keyframe, still lets camera j's position and rotation improve.
        X_p3: world points; obs_cam / obs_pt / obs_uv: observation m sees point obs_pt[m] in camera
            obs_cam[m] at pixel obs_uv[m].
        refine_focal: also estimate one factor s on fx and fy (principal point fixed), returned as the last
            value (1.0 when not refined); the focal self-calibration of recon.backends.geometric.selfcalib.
        dense: solve each trust-region step exactly on the dense Jacobian (small problems only): the iterative
            LSMR steps stall far from the optimum when every projection is off, e.g. after a focal change.
    """
    C, P, M = len(T_cw_c44), len(X_p3), len(obs_cam)
    cams = np.zeros((C, 6))
    cams[:, :3] = Rotation.from_matrix(T_cw_c44[:, :3, :3]).as_rotvec()
    cams[:, 3:] = T_cw_c44[:, :3, 3]
    free = np.flatnonzero(~fixed_c)
    col_of_cam = -np.ones(C, np.int64)
    col_of_cam[free] = np.arange(len(free)) * 6
    n_cam_params = 6 * len(free)

    n_point_params = 3 * P

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        c = cams.copy()
        c[free] = x[:n_cam_params].reshape(-1, 6)
        fs = float(np.exp(x[-1])) if refine_focal else 1.0
        return c, x[n_cam_params:n_cam_params + n_point_params].reshape(-1, 3), fs

    def centre(c6: np.ndarray) -> np.ndarray:
        return -Rotation.from_rotvec(c6[:3]).as_matrix().T @ c6[3:]

    d0, w_scale = 0.0, 0.0
    if scale_pair is not None:
        d0 = float(np.linalg.norm(centre(cams[scale_pair[0]]) - centre(cams[scale_pair[1]])))
        w_scale = 100.0 / max(d0, 1e-9)  # 1% change of the distance costs like a 1 px residual

    def residuals(x: np.ndarray) -> np.ndarray:
        c, X, fs = unpack(x)
        r = (_project(c, X, obs_cam, obs_pt, K, fs) - obs_uv).ravel()
        if scale_pair is None:
            return r
        d = np.linalg.norm(centre(c[scale_pair[0]]) - centre(c[scale_pair[1]]))
        return np.append(r, w_scale * (d - d0))

    def jacobian(x: np.ndarray) -> coo_matrix:
        c, X, fs = unpack(x)
        R = Rotation.from_rotvec(c[:, :3]).as_matrix()
        RY = np.einsum("mij,mj->mi", R[obs_cam], X[obs_pt])
        Xc = RY + c[obs_cam, 3:]
        z = np.maximum(Xc[:, 2], 1e-6)
        F = fs * np.array([K[0, 0], K[1, 1]])
        dp = np.zeros((M, 2, 3))  # d(u, v) / d Xc
        dp[:, 0, 0] = F[0] / z
        dp[:, 1, 1] = F[1] / z
        dp[:, :, 2] = -F * Xc[:, :2] / z[:, None] ** 2
        d_w = -dp @ _skew(RY) @ _left_jacobian(c[obs_cam, :3])  # [M, 2, 3]
        d_X = dp @ R[obs_cam]
        vals = []
        for k in range(2):
            vals += [d_w[has_cam, k, j] for j in range(3)] + [dp[has_cam, k, j] for j in range(3)]
            vals += [d_X[:, k, j] for j in range(3)]
        if scale_pair is not None:
            i, j = scale_pair
            ci, cj = centre(c[i]), centre(c[j])
            g = w_scale * (ci - cj) / max(float(np.linalg.norm(ci - cj)), 1e-12)
            for cam, sign in ((i, 1.0), (j, -1.0)):
                if col_of_cam[cam] >= 0:  # c = -R^T t: dc/dw = [c]_x J_l(-w), dc/dt = -R^T
                    dc_dw = _skew(centre(c[cam])) @ _left_jacobian(-c[cam, :3])
                    dc_dt = -Rotation.from_rotvec(c[cam, :3]).as_matrix().T
                    vals.append(sign * g @ np.hstack([dc_dw, dc_dt]))
        if refine_focal:
            vals.append((F * Xc[:, :2] / z[:, None]).ravel())
        return coo_matrix((np.concatenate(vals), (rows_a, cols_a)), shape=(n_rows, n_params))

    rows, cols = [], []
    r = np.arange(M)
    has_cam = col_of_cam[obs_cam] >= 0
    for k in range(2):
        for j in range(6):
            rows.append(2 * r[has_cam] + k)
            cols.append(col_of_cam[obs_cam[has_cam]] + j)
        for j in range(3):
            rows.append(2 * r + k)
            cols.append(n_cam_params + 3 * obs_pt + j)
    n_rows = 2 * M
    if scale_pair is not None:
        for cam in scale_pair:
            if col_of_cam[cam] >= 0:
                rows.append(np.full(6, n_rows))
                cols.append(col_of_cam[cam] + np.arange(6))
        n_rows += 1
    n_params = n_cam_params + n_point_params + int(refine_focal)
    if refine_focal:  # one dense column: every reprojection residual depends on the focal length
        rows.append(np.arange(2 * M))
        cols.append(np.full(2 * M, n_params - 1))
    rows_a, cols_a = np.concatenate(rows), np.concatenate(cols)
    x0 = np.concatenate([cams[free].ravel(), X_p3.ravel(), np.zeros(int(refine_focal))])
    jac = (lambda x: jacobian(x).toarray()) if dense else (lambda x: jacobian(x).tocsr())
    sol = least_squares(residuals, x0, jac=jac, method="trf", loss="huber", f_scale=huber_px, x_scale="jac",
                        max_nfev=max_nfev, xtol=1e-8, ftol=1e-6, tr_solver="exact" if dense else "lsmr")
    logger.debug("bundle adjustment: %d cameras (%d free), %d points, %d observations, rms %.2f -> %.2f px, "
                 "%d evaluations", C, len(free), P, M, np.sqrt(np.mean(residuals(x0) ** 2)),
                 np.sqrt(np.mean(sol.fun ** 2)), sol.nfev)
    c, X, fs = unpack(sol.x)
    T = np.tile(np.eye(4), (C, 1, 1))
    T[:, :3, :3] = Rotation.from_rotvec(c[:, :3]).as_matrix()
    T[:, :3, 3] = c[:, 3:]
    err = np.linalg.norm(_project(c, X, obs_cam, obs_pt, K, fs) - obs_uv, axis=1)
    return T, X, err, fs
