"""Local bundle adjustment for monocular VO: Levenberg-Marquardt over a window of keyframes, points eliminated by
the Schur complement.

Cameras are world-to-camera (Rodrigues vector, translation), points are world xyz; residuals are pixel
reprojection errors with a Huber loss (iteratively reweighted). The Jacobian is analytic: each observation
touches one camera and one point, so the normal equations are a small dense camera block (6 per free keyframe,
plus the focal factor) and 3x3 point blocks; the points are eliminated (Schur complement) and each step is one
dense solve of the camera block.

Why not scipy's `least_squares` (used before): its sparse trust-region steps run LSMR, tens of thousands of small
numpy and scipy calls per adjustment (78,000 Python calls per adjustment on the sample at 640x480), and each of
them is a point where the interpreter lock changes hands. With four live sessions in one node the adjustments ran
3-20x slower than alone (an initial adjustment of 150 ms took 2-3.7 s in `recon bench live`). This solver does
a few dozen vectorised operations per iteration, and its steps are exact, where LSMR's stalled far from the optimum
(every projection off after a focal change; the reason for the former `dense` option).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.sparse import csr_matrix
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


class BundleProblem:
    """Residuals and Jacobian blocks of one adjustment. The parameter vector is
    [free cameras (6 each), log focal factor (if refined), points (3 each)]: the camera side first, as eliminated.

    Rows: 2 per observation (u, v), then one for the scale gauge when `scale_pair` is given.
    """

    def __init__(self, T_cw_c44: np.ndarray, fixed_c: np.ndarray, X_p3: np.ndarray, obs_cam: np.ndarray,
                 obs_pt: np.ndarray, obs_uv: np.ndarray, K: np.ndarray, scale_pair: tuple[int, int] | None,
                 refine_focal: bool) -> None:
        self.C, self.P, self.M = len(T_cw_c44), len(X_p3), len(obs_cam)
        self.cams = np.zeros((self.C, 6))
        self.cams[:, :3] = Rotation.from_matrix(T_cw_c44[:, :3, :3]).as_rotvec()
        self.cams[:, 3:] = T_cw_c44[:, :3, 3]
        self.X0 = np.asarray(X_p3, np.float64)
        self.obs_cam, self.obs_pt = np.asarray(obs_cam, np.int64), np.asarray(obs_pt, np.int64)
        self.obs_uv, self.K = np.asarray(obs_uv, np.float64), K
        self.scale_pair, self.refine_focal = scale_pair, bool(refine_focal)
        self.free = np.flatnonzero(~np.asarray(fixed_c, bool))
        self.col_of_cam = -np.ones(self.C, np.int64)
        self.col_of_cam[self.free] = np.arange(len(self.free)) * 6
        self.n_side = 6 * len(self.free) + int(self.refine_focal)  # the eliminated-into (camera) side
        self.n_rows = 2 * self.M + int(scale_pair is not None)
        self.d0, self.w_scale = 0.0, 0.0
        if scale_pair is not None:
            self.d0 = float(np.linalg.norm(self._centre(self.cams[scale_pair[0]]) -
                                           self._centre(self.cams[scale_pair[1]])))
            self.w_scale = 100.0 / max(self.d0, 1e-9)  # 1% change of the distance costs like a 1 px residual
        # Sums over each point's observations as one sparse product (points without observations give zeros).
        self.by_point = csr_matrix((np.ones(self.M), (self.obs_pt, np.arange(self.M))), shape=(self.P, self.M))
        has_cam = self.col_of_cam[self.obs_cam] >= 0
        m = np.flatnonzero(has_cam)
        self._cam_obs = m
        self._cam_rows = (2 * m[:, None, None] + np.arange(2)[None, :, None]) * np.ones((1, 1, 6), np.int64)
        self._cam_cols = (self.col_of_cam[self.obs_cam[m]][:, None, None] + np.arange(6)[None, None, :]) \
            * np.ones((1, 2, 1), np.int64)

    @staticmethod
    def _centre(c6: np.ndarray) -> np.ndarray:
        return -Rotation.from_rotvec(c6[:3]).as_matrix().T @ c6[3:]

    def x0(self) -> np.ndarray:
        return np.concatenate([self.cams[self.free].ravel(), np.zeros(int(self.refine_focal)), self.X0.ravel()])

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        c = self.cams.copy()
        n_cam = 6 * len(self.free)
        c[self.free] = x[:n_cam].reshape(-1, 6)
        fs = float(np.exp(x[n_cam])) if self.refine_focal else 1.0
        return c, x[self.n_side:].reshape(-1, 3), fs

    def residuals(self, x: np.ndarray) -> np.ndarray:
        c, X, fs = self.unpack(x)
        r = (_project(c, X, self.obs_cam, self.obs_pt, self.K, fs) - self.obs_uv).ravel()
        if self.scale_pair is None:
            return r
        i, j = self.scale_pair
        d = np.linalg.norm(self._centre(c[i]) - self._centre(c[j]))
        return np.append(r, self.w_scale * (d - self.d0))

    def jacobian(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A [rows, n_side]: d residual / d camera side, dense; B [M, 2, 3]: d (u, v) of observation m / d its
        point)."""
        c, X, fs = self.unpack(x)
        K, oc, op = self.K, self.obs_cam, self.obs_pt
        R = Rotation.from_rotvec(c[:, :3]).as_matrix()
        RY = np.einsum("mij,mj->mi", R[oc], X[op])
        Xc = RY + c[oc, 3:]
        z = np.maximum(Xc[:, 2], 1e-6)
        F = fs * np.array([K[0, 0], K[1, 1]])
        dp = np.zeros((self.M, 2, 3))  # d(u, v) / d Xc, which is also d(u, v) / d t
        dp[:, 0, 0] = F[0] / z
        dp[:, 1, 1] = F[1] / z
        dp[:, :, 2] = -F * Xc[:, :2] / z[:, None] ** 2
        A = np.zeros((self.n_rows, self.n_side))
        m = self._cam_obs
        if len(m):
            d_w = -dp[m] @ _skew(RY[m]) @ _left_jacobian(c[oc[m], :3])  # [m, 2, 3]
            A[self._cam_rows, self._cam_cols] = np.concatenate([d_w, dp[m]], axis=2)
        if self.scale_pair is not None:
            i, j = self.scale_pair
            ci, cj = self._centre(c[i]), self._centre(c[j])
            g = self.w_scale * (ci - cj) / max(float(np.linalg.norm(ci - cj)), 1e-12)
            for cam, sign in ((i, 1.0), (j, -1.0)):
                col = self.col_of_cam[cam]
                if col >= 0:  # c = -R^T t: dc/dw = [c]_x J_l(-w), dc/dt = -R^T
                    dc_dw = _skew(self._centre(c[cam])) @ _left_jacobian(-c[cam, :3])
                    dc_dt = -Rotation.from_rotvec(c[cam, :3]).as_matrix().T
                    A[-1, col:col + 6] += sign * g @ np.hstack([dc_dw, dc_dt])
        if self.refine_focal:
            A[:2 * self.M, -1] = (F * Xc[:, :2] / z[:, None]).ravel()
        return A, dp @ R[oc]

    def step(self, A: np.ndarray, B: np.ndarray, r: np.ndarray, w: np.ndarray, damping: float) -> np.ndarray:
        """The damped Gauss-Newton step for weights `w` (Marquardt: the diagonal scaled by 1 + damping)."""
        M, P, n = self.M, self.P, self.n_side
        Aw = A * w[:, None]
        Hcc = A.T @ Aw
        gc = Aw.T @ r
        wo = w[:2 * M].reshape(M, 2)
        Bw = B * wo[:, :, None]  # [M, 2, 3]
        ro = r[:2 * M].reshape(M, 2)
        Hpp = (self.by_point @ np.einsum("mki,mkj->mij", Bw, B).reshape(M, 9)).reshape(P, 3, 3)
        gp = self.by_point @ np.einsum("mki,mk->mi", Bw, ro)
        Hpc = (self.by_point @ np.einsum("mki,mkj->mij", Bw, A[:2 * M].reshape(M, 2, n)).reshape(M, 3 * n)
               ).reshape(P, 3, n)
        Hpp_d = Hpp + damping * Hpp * np.eye(3) + 1e-12 * np.eye(3)
        Hpp_inv = np.linalg.inv(Hpp_d)
        T = Hpp_inv @ Hpc  # [P, 3, n]
        u = np.einsum("pij,pj->pi", Hpp_inv, gp)
        if n:
            S = Hcc + damping * np.diag(np.diag(Hcc)) - Hpc.reshape(3 * P, n).T @ T.reshape(3 * P, n)
            bc = -gc + Hpc.reshape(3 * P, n).T @ u.ravel()
            dc = np.linalg.solve(S + 1e-12 * np.eye(n), bc)
        else:
            dc = np.zeros(0)
        dpts = -(u + T @ dc)
        return np.concatenate([dc, dpts.ravel()])


def _huber(r: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Huber cost (scipy's `loss="huber"` with f_scale=delta: 0.5 * sum of delta^2 rho((r/delta)^2)) and the
    reweighting factors rho' (1 inside, delta/|r| outside)."""
    a = np.abs(r)
    inside = a <= delta
    cost = 0.5 * float(np.sum(np.where(inside, r * r, 2 * delta * a - delta * delta)))
    return cost, np.where(inside, 1.0, delta / np.maximum(a, 1e-300))


def bundle_adjust(T_cw_c44: np.ndarray, fixed_c: np.ndarray, X_p3: np.ndarray, obs_cam: np.ndarray,
                  obs_pt: np.ndarray, obs_uv: np.ndarray, K: np.ndarray, *, huber_px: float = 1.5,
                  max_nfev: int = 20, scale_pair: tuple[int, int] | None = None, refine_focal: bool = False,
                  ftol: float = 1e-6, xtol: float = 1e-8) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
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
        max_nfev: residual evaluations (the start and one per tried step, as scipy counts them).
        ftol / xtol: stop when a step lowers the cost by less than ftol of it, or moves x by less than xtol of it.
    """
    problem = BundleProblem(T_cw_c44, fixed_c, X_p3, obs_cam, obs_pt, obs_uv, K, scale_pair, refine_focal)
    x = problem.x0()
    r = problem.residuals(x)
    cost, w = _huber(r, huber_px)
    cost0, nfev, damping = cost, 1, 1e-4
    A = B = None
    while nfev < max_nfev:
        if A is None:
            A, B = problem.jacobian(x)
        with np.errstate(all="ignore"):
            try:
                dx = problem.step(A, B, r, w, damping)
            except np.linalg.LinAlgError:
                dx = None
        if dx is None or not np.all(np.isfinite(dx)):
            damping *= 10
            if damping > 1e8:
                break
            continue
        x_new = x + dx
        r_new = problem.residuals(x_new)
        nfev += 1
        cost_new, w_new = _huber(r_new, huber_px)
        if np.isfinite(cost_new) and cost_new < cost:
            small = cost - cost_new < ftol * cost or np.linalg.norm(dx) < xtol * (xtol + np.linalg.norm(x))
            x, r, cost, w = x_new, r_new, cost_new, w_new
            A = None
            damping = max(damping / 3, 1e-9)
            if small:
                break
        else:
            damping *= 10
            if damping > 1e8:
                break
    logger.debug("bundle adjustment: %d cameras (%d free), %d points, %d observations, cost %.4g -> %.4g, "
                 "%d evaluations", problem.C, len(problem.free), problem.P, problem.M, cost0, cost, nfev)
    c, X, fs = problem.unpack(x)
    T = np.tile(np.eye(4), (problem.C, 1, 1))
    T[:, :3, :3] = Rotation.from_rotvec(c[:, :3]).as_matrix()
    T[:, :3, 3] = c[:, 3:]
    err = np.linalg.norm(_project(c, X, problem.obs_cam, problem.obs_pt, K, fs) - problem.obs_uv, axis=1)
    return T, X, err, fs
