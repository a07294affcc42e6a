"""Least-squares similarity / rigid alignment of corresponding point sets (Umeyama, IEEE PAMI 1991).

Trajectory metrics (ATE with `--align`, `--correct_scale` in evo's terms) and window registration use it to
remove the gauge freedom of a reconstruction: a rigid motion (SE(3)) or a rigid motion plus scale (Sim(3)).
"""

from __future__ import annotations

import logging

import numpy as np

from recon.geometry.transforms import GeometryError, check_shape

logger = logging.getLogger(__name__)


def umeyama(
    src_n3: np.ndarray,
    dst_n3: np.ndarray,
    with_scale: bool,
    weights_n: np.ndarray | None = None,
    *,
    strict: bool = True,
) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) minimising sum_i w_i ||dst_i - (s·R·src_i + t)||^2.

    Args:
        src_n3, dst_n3: corresponding points [N,3], N >= 3 (N >= 1 with strict=False).
        with_scale: estimate s (Sim(3)); otherwise s = 1 (SE(3)).
        weights_n: optional non-negative weights [N]; uniform when None (then identical to evo's
            `umeyama_alignment`).
        strict: raise GeometryError when the rotation is not unique (fewer than 3 points, or points on a
            line). With strict=False a rank-deficient problem returns one of the equally good minimisers
            and logs a warning: positions still fit optimally, rotation about the line is arbitrary.

    Returns:
        s (float), R [3,3] with det +1, t [3]; apply as Sim3(s, R, t).apply_points(src).
    """
    src = check_shape("src_n3", src_n3, (3,))
    dst = check_shape("dst_n3", dst_n3, (3,))
    if src.ndim != 2 or src.shape != dst.shape:
        raise GeometryError(f"umeyama needs two [N,3] arrays of equal shape, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    if n == 0 or (strict and n < 3):
        raise GeometryError(f"umeyama needs at least 3 corresponding points, got {n}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise GeometryError("umeyama input contains NaN or inf")
    if weights_n is None:
        w = np.full(n, 1.0 / n)
    else:
        w = np.asarray(weights_n, dtype=np.float64).reshape(-1)
        if w.shape != (n,) or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
            raise GeometryError(f"weights must be [N={n}] finite, non-negative, with a positive sum")
        w = w / w.sum()

    mu_src = w @ src
    mu_dst = w @ dst
    src_c = src - mu_src
    dst_c = dst - mu_dst
    var_src = float(w @ np.sum(src_c**2, axis=1))
    cov = (dst_c * w[:, None]).T @ src_c  # sum_i w_i (dst_i - mu)(src_i - mu)^T
    U, d, Vt = np.linalg.svd(cov)
    # The rotation is unique only when cov has rank >= 2. evo tests d > eps absolutely, which lets rounding noise
    # on exactly collinear points pass; a relative test catches it at any scale.
    rank = int(np.count_nonzero(d > 1e-12 * max(d[0], np.finfo(np.float64).tiny)))
    if rank < 2:
        msg = f"degenerate point sets for alignment (cross-covariance rank {rank}: points coincide or are collinear)"
        if strict:
            raise GeometryError(msg)
        logger.warning("%s; rotation about the degenerate axis is arbitrary", msg)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0.0:
        S[2, 2] = -1.0  # reflection -> proper rotation (Kabsch)
    R = U @ S @ Vt
    if with_scale:
        if var_src <= np.finfo(np.float64).tiny:
            raise GeometryError("cannot estimate scale: source points have zero spread")
        s = float(np.sum(d * np.diag(S)) / var_src)
        if s <= 0.0:
            raise GeometryError(f"estimated scale is not positive ({s}); point sets do not correspond")
    else:
        s = 1.0
    t = mu_dst - s * (R @ mu_src)
    return s, R, t
