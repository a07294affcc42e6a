"""Global Sim(3) between adjacent windows, as LASER registers a new window onto the previous one.

Reference: neu-vi/LASER@987d674 `register_adjacent_windows` (inference_utils.py:177-230) and
`register_camera_poses_kabsch_pytorch` / `apply_sim3_to_pose` (utils/geometry.py:49-161); the rules are spelled out
in ../shared/golden/laser_sim3/README.md. Defaults reproduce the reference exactly; `relative_tol` is our
option for scale-independent IRLS stopping (the reference stops at an absolute |Δs| < 0.05, which ends after one
update when scales are << 1).

All functions are torch and keep the input dtype, because the reference accumulates its sums in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def confidence_threshold(conf: torch.Tensor, top_conf_percentile: float) -> torch.Tensor:
    """Threshold keeping the top `top_conf_percentile` fraction of a window's confidences.

    Matches torch.quantile(conf, 1 - p, interpolation="nearest") over all pixels of all frames: the rank
    q·(n-1) is computed in float32 and rounded half to even. Uses kthvalue, so it has no size limit.
    """
    flat = conf.reshape(-1)
    n = flat.numel()
    q = torch.tensor(1.0 - top_conf_percentile, dtype=torch.float32)
    rank = int(torch.round(q * (n - 1)).item())
    return flat.kthvalue(rank + 1).values


def confidence_mask(conf: torch.Tensor, top_conf_percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, threshold) with mask = conf >= threshold over the whole window."""
    thr = confidence_threshold(conf, top_conf_percentile)
    return conf >= thr, thr


@dataclass
class IrlsResult:
    """Outcome of a robust 1-D scale fit.

    Attributes:
        scale: final scale (0-d tensor).
        iterates: values after k updates, k = 0 (init) .. max_iters; fixed after convergence.
        num_iters: number of updates made.
    """

    scale: torch.Tensor
    iterates: torch.Tensor
    num_iters: int


def irls_scale(
    src: torch.Tensor,
    dst: torch.Tensor,
    *,
    init: torch.Tensor | None = None,
    max_iters: int = 10,
    eps: float = 1e-8,
    stop_tol: float = 0.05,
    relative_tol: bool = False,
    clamp_min: float = 1e-6,
) -> IrlsResult:
    """Robust scale s minimising Σ ||s·src - dst|| (L1 on the residual norm) by reweighted least squares.

    Args:
        src, dst: [N, D] corresponding vectors (D = 3 for points, 1 for depths).
        init: starting scale; default least squares Σ<src,dst>/Σ||src||².
        stop_tol: stop when |s' - s| < stop_tol (or < stop_tol·s with `relative_tol`), keeping s'.
    """
    if src.ndim == 1:
        src, dst = src[:, None], dst[:, None]
    dot = (src * dst).sum(-1)
    sq = (src * src).sum(-1)
    s = dot.sum() / sq.sum() if init is None else init.to(src.dtype)
    s = s.clamp_min(clamp_min)
    iterates = [s]
    num_iters = 0
    for _ in range(max_iters):
        residual = torch.linalg.vector_norm(s * src - dst, dim=-1)
        w = 1.0 / (residual + eps)
        s_new = ((w * dot).sum() / (w * sq).sum()).clamp_min(clamp_min)
        num_iters += 1
        delta = (s_new - s).abs()
        s = s_new
        iterates.append(s)
        tol = stop_tol * s.abs() if relative_tol else stop_tol
        if bool(delta < tol):
            break
    iterates += [s] * (max_iters + 1 - len(iterates))
    return IrlsResult(s, torch.stack(iterates), num_iters)


def kabsch_from_poses(
    src_poses: torch.Tensor, dst_poses: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation and translation mapping scaled source camera poses onto target poses.

    Each camera-to-world pose contributes its centre c, the view tip c + R·(0,0,-1) and the up tip c + R·(0,1,0);
    the source centres are scaled by `scale` first. Both sets are centred on the mean camera centre only (a
    reference quirk), so the tips keep R well posed when the camera barely moves.
    """
    def triplets(poses: torch.Tensor, s: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        R = poses[:, :3, :3]
        c = s * poses[:, :3, 3]
        view = R @ torch.tensor([0.0, 0.0, -1.0], dtype=poses.dtype)
        up = R @ torch.tensor([0.0, 1.0, 0.0], dtype=poses.dtype)
        view = view / torch.linalg.vector_norm(view, dim=-1, keepdim=True)
        up = up / torch.linalg.vector_norm(up, dim=-1, keepdim=True)
        return torch.cat([c, c + view, c + up], dim=0), c.mean(0)

    src_pts, src_centre = triplets(src_poses, scale)
    dst_pts, dst_centre = triplets(dst_poses, 1.0)
    H = (src_pts - src_centre).T @ (dst_pts - dst_centre)
    U, _, Vh = torch.linalg.svd(H)
    R = Vh.T @ U.T
    if bool(torch.linalg.det(R) < 0):
        Vh = Vh.clone()
        Vh[-1] = -Vh[-1]
        R = Vh.T @ U.T
    t = dst_centre - R @ src_centre
    return R, t


def apply_sim3_to_poses(poses: torch.Tensor, scale: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Camera-to-world poses moved by X' = s·R·X + t: rotation R·R_c, centre s·R·c + t."""
    out = poses.clone()
    out[:, :3, :3] = R @ poses[:, :3, :3]
    out[:, :3, 3] = scale * (poses[:, :3, 3] @ R.T) + t
    return out


@dataclass
class WindowSim3:
    """Result of registering a window onto its predecessor.

    Attributes:
        scale, R, t: the Sim(3) X_prev = s·R·X_cur + t.
        irls: the scale fit's details.
        overlap_mask: [O,H,W] pixels used for the scale.
    """

    scale: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    irls: IrlsResult
    overlap_mask: torch.Tensor


def register_adjacent_windows(
    prev_local_points: torch.Tensor,
    cur_local_points: torch.Tensor,
    prev_poses: torch.Tensor,
    cur_poses: torch.Tensor,
    overlap_mask: torch.Tensor,
    *,
    relative_tol: bool = False,
) -> WindowSim3:
    """Sim(3) from the O shared frames: IRLS scale on camera-frame points, then Kabsch on the poses.

    Args:
        prev_local_points, cur_local_points: [O,H,W,3] camera-frame points of the shared frames.
        prev_poses, cur_poses: [O,4,4] camera-to-world poses of the shared frames.
        overlap_mask: [O,H,W] bool, pixels confident in both windows (one pixel = one correspondence).
    """
    if int(overlap_mask.sum()) < 3:  # no confident pixel in common: fall back to every valid pixel
        overlap_mask = (cur_local_points[..., 2] > 0) & (prev_local_points[..., 2] > 0)
    p = cur_local_points[overlap_mask]
    q = prev_local_points[overlap_mask]
    irls = irls_scale(p, q, relative_tol=relative_tol)
    R, t = kabsch_from_poses(cur_poses, prev_poses, irls.scale)
    return WindowSim3(irls.scale, R, t, irls, overlap_mask)
