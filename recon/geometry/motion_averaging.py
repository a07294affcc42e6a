"""Online motion averaging: windowed relative poses -> absolute camera poses, chunk by chunk.

HorizonStream's camera head predicts, for every frame n and window slot j, the pose of frame n relative to the
reference frame r = n - (Win-1) + j (slot value T_r · T_n^-1, world-to-camera 4x4 matrices). Each new frame then
has Win-1 estimates against already fixed frames; its rotation is the robust median of the candidate rotations
R_slot^T R_r and its centre the per-coordinate median of C_r + R_r^T t_slot. The reference
(TooCoolLa/HorizonStream@ddf1333 horizonstream/runtime/motion_averaging.py) computes this for the whole sequence
after inference; here it runs after every chunk so poses are emitted live.

Determinism: the median rotation starts from 10 candidates drawn at random; the reference draws them from the
global torch generator, we take an explicit `torch.Generator` (or a replayed list of draws).
The rules are written out in ../shared/golden/motion_averaging/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


def quat_xyzw_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Rotation from a possibly unnormalised xyzw quaternion (the 2/|q|^2 form, scale-invariant)."""
    x, y, z, w = q.unbind(-1)
    two_s = 2.0 / (q * q).sum(-1)
    R = torch.stack([
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    ], dim=-1)
    return R.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat_xyzw(R: torch.Tensor) -> torch.Tensor:
    """xyzw quaternion with w >= 0: of four candidates, the one with the largest denominator (numerically best)."""
    m = R.reshape(R.shape[:-2] + (9,))
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    q_abs = torch.sqrt(torch.clamp(torch.stack([
        1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], -1), min=0))
    # Candidates in wxyz order, each scaled by 2*q_abs[i].
    cands = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
    ], -2)
    cands = cands / (2.0 * q_abs[..., None].clamp(min=0.1))
    best = q_abs.argmax(-1)
    wxyz = torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    wxyz = torch.where(wxyz[..., :1] < 0, -wxyz, wxyz)
    return torch.cat([wxyz[..., 1:], wxyz[..., :1]], -1)


def so3_log_angle(R: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotation vectors [...,3], angles [...]) of rotations [...,3,3], with the reference's branches.

    angle = acos of the clamped (trace - 1) / 2; vector = angle / (2 sin(angle) + eps) * vee(R), half of vee below
    1e-4 rad, and within 1e-4 of pi the axis from the diagonal of (R + I) / 2 signed by vee (a zero sign zeroes that
    component, as in `runtime/averaging/median_rotations.py::_so3_log`).
    """
    cos = ((R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0) * 0.5).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    vee = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    v = (theta / (2.0 * torch.sin(theta) + eps))[..., None] * vee
    v = torch.where((theta < 1e-4)[..., None], 0.5 * vee, v)
    near_pi = (torch.pi - theta) < 1e-4
    if bool(near_pi.any()):
        diag = ((torch.diagonal(R, dim1=-2, dim2=-1) + 1.0) * 0.5).clamp(min=0.0)
        axis = torch.sqrt(diag) * torch.sign(vee)
        axis = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True).clamp(min=eps)
        v = torch.where(near_pi[..., None], axis * theta[..., None], v)
    return v, theta


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Rotation vectors [...,3] of rotations [...,3,3] (see `so3_log_angle`)."""
    return so3_log_angle(R)[0]


def so3_exp(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rotations [...,3,3] from rotation vectors [...,3] (Rodrigues; the series to theta^4 below `eps`)."""
    theta = torch.linalg.vector_norm(v, dim=-1)
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(v.shape[:-1] + (3, 3))
    t2 = theta * theta
    small = theta < eps
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1.0 - t2 / 6.0 + t2 * t2 / 120.0, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - t2 / 24.0 + t2 * t2 / 720.0, (1.0 - torch.cos(safe)) / (safe * safe))
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(Kx.shape)
    return eye + a[..., None, None] * Kx + b[..., None, None] * (Kx @ Kx)


def midpoint_median(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Median taking the midpoint of the two middle values for even counts (not torch.median's lower one)."""
    s = x.sort(dim=dim).values
    n = x.shape[dim]
    lo, hi = s.narrow(dim, (n - 1) // 2, 1), s.narrow(dim, n // 2, 1)
    return ((lo + hi) / 2.0).squeeze(dim)


def median_rotation(Rs: torch.Tensor, init_ids: torch.Tensor, max_iters: int = 1000, eps: float = 1e-5
                    ) -> torch.Tensor:
    """Robust median of rotations [N,3,3], refined from every candidate start in `init_ids` at once.

    Per start R, repeat: residual log vectors of R_w R^T and their per-coordinate midpoint median m; once
    |m| < eps the start has converged at this R (the step is *not* applied, as in the reference's
    `get_median_rotations`) with score = midpoint median of the residual angles; otherwise R <- exp(m) R. The
    converged start with the smallest score wins (the first on ties); if none converges, the first input.

    All starts advance together in one batch with the reference's products (`einsum` over the stacked starts) and
    in its dtype, float32: the stop test is a threshold on float32 values, so computing in another precision moves
    the stopping iterate (float64 here lands up to 3e-5 away from the reference's poses on the motion_averaging
    fixture; this form agrees to a few float32 ulps).
    """
    R_med = Rs[init_ids.reshape(-1)].clone()  # [T, 3, 3]
    T = R_med.shape[0]
    score = torch.full((T,), float("inf"), dtype=Rs.dtype, device=Rs.device)
    converged = torch.zeros(T, dtype=torch.bool, device=Rs.device)
    for _ in range(max_iters):
        vec, angle = so3_log_angle(torch.einsum("wij,tjk->twik", Rs, R_med.transpose(-1, -2)))  # [T, N, 3]
        m = midpoint_median(vec, dim=1)  # [T, 3]
        newly = (torch.linalg.vector_norm(m, dim=-1) < eps) & ~converged
        if bool(newly.any()):
            score = torch.where(newly, midpoint_median(angle, dim=1), score)
            converged = converged | newly
        if bool(converged.all()):
            break
        stepped = torch.einsum("tij,tjk->tik", so3_exp(m), R_med)
        R_med = torch.where(converged[:, None, None], R_med, stepped)
    best_score, best = score.min(dim=0)
    return R_med[best] if bool(torch.isfinite(best_score)) else Rs[0]


def encoding_to_w2c(enc: torch.Tensor) -> torch.Tensor:
    """[...,9] (t, xyzw quaternion, fovs) -> [...,3,4] world-to-camera [R | t]."""
    return torch.cat([quat_xyzw_to_rotmat(enc[..., 3:7]), enc[..., :3, None]], dim=-1)


def _centre(T: torch.Tensor) -> torch.Tensor:
    return -T[..., :3, :3].transpose(-1, -2) @ T[..., :3, 3:4]


@dataclass
class MotionAveragingState:
    """Everything online motion averaging keeps (bounded by the window for the computation itself).

    Attributes:
        online: absolute world-to-camera [3,4] poses of all frames fixed so far (history; 48 B per frame).
        last: the single-edge chain through the previous frame (diagnostic baseline).
        relative: per frame from Win-1 on, its row of Win relative poses [Win,3,4].
        fovs: per such row, [Win,2] field-of-view estimates; frame k+j gets row k slot j.
        draws: the random candidate starts used, in call order (for replay and audits).
    """

    online: list[torch.Tensor] = field(default_factory=list)
    last: list[torch.Tensor] = field(default_factory=list)
    relative: list[torch.Tensor] = field(default_factory=list)
    fovs: list[torch.Tensor] = field(default_factory=list)
    draws: list[torch.Tensor] = field(default_factory=list)


class OnlineMotionAveraging:
    """Chunk-by-chunk motion averaging over slot-relative pose encodings.

    Args:
        window_size: Win, slots per frame.
        generator: source of the random candidate starts (explicit, so runs are reproducible).
        replay_draws: optional iterator of stored candidate draws ([1,10] each), consumed in call order.
        num_candidates, max_iters, eps: median-rotation knobs (reference: 10, 1000, 1e-5).
    """

    def __init__(self, window_size: int, *, generator: torch.Generator | None = None,
                 replay_draws: Iterator[torch.Tensor] | None = None, num_candidates: int = 10,
                 max_iters: int = 1000, eps: float = 1e-5) -> None:
        self.window_size = window_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.replay_draws = replay_draws
        self.num_candidates, self.max_iters, self.eps = num_candidates, max_iters, eps
        self.state = MotionAveragingState()

    def reset(self) -> None:
        self.state = MotionAveragingState()

    def _draw(self) -> torch.Tensor:
        if self.replay_draws is not None:
            ids = next(self.replay_draws)
        else:
            ids = torch.randint(0, self.window_size - 1, (1, self.num_candidates), generator=self.generator)
        self.state.draws.append(ids)
        return ids.reshape(-1)

    def add_chunk(self, slots: torch.Tensor) -> list[torch.Tensor]:
        """Add one chunk of slot encodings [rows, Win, 9]; returns the newly fixed world-to-camera [3,4] poses.

        The first chunk must have Win rows (only its last row is used: the world is camera Win-1); every row of a
        later chunk is one new frame.
        """
        win, st = self.window_size, self.state
        rel = encoding_to_w2c(slots)
        new: list[torch.Tensor] = []
        if not st.online:
            if slots.shape[0] != win:
                raise ValueError(f"the first chunk needs {win} rows (one window), got {slots.shape[0]}")
            st.relative.append(rel[-1])
            st.fovs.append(slots[-1, :, 7:9])
            for j in range(win):
                st.online.append(rel[-1, j])
                st.last.append(rel[-1, j])
                new.append(rel[-1, j])
            return new
        for row in range(slots.shape[0]):
            cache = torch.stack(st.online[-(win - 1):])  # frames n-Win+1 .. n-1
            R_cache, t_slot = cache[:, :3, :3], rel[row, : win - 1, :3, 3:4]
            R_cand = rel[row, : win - 1, :3, :3].transpose(-1, -2) @ R_cache
            C_cand = _centre(cache) + R_cache.transpose(-1, -2) @ t_slot
            R_med = median_rotation(R_cand, self._draw(), self.max_iters, self.eps)
            C_med = torch.median(C_cand, dim=0).values
            pose = torch.cat([R_med, -R_med @ C_med], dim=-1)
            prev_last = st.last[-1]
            R_last = rel[row, win - 2, :3, :3].transpose(-1, -2) @ prev_last[:, :3]
            C_last = _centre(prev_last) + prev_last[:, :3].transpose(-1, -2) @ rel[row, win - 2, :3, 3:4]
            st.last.append(torch.cat([R_last, -R_last @ C_last], dim=-1))
            st.online.append(pose)
            st.relative.append(rel[row])
            st.fovs.append(slots[row, :, 7:9])
            new.append(pose)
        return new

    # -- camera maps (re-based on frame 0), as compute_motion_averaged_camera_maps returns them -------------------

    def frame_fovs(self) -> torch.Tensor:
        """[N,2] per-frame fields of view: lower median over the anti-diagonal (row k, slot j -> frame k + j)."""
        grid = torch.stack(self.state.fovs)  # [rows, Win, 2]
        rows, win = grid.shape[:2]
        out = []
        for f in range(len(self.state.online)):
            vals = [grid[k, f - k] for k in range(max(0, f - win + 1), min(f, rows - 1) + 1)]
            out.append(torch.median(torch.stack(vals), dim=0).values)
        return torch.stack(out)

    def lag_poses(self) -> torch.Tensor:
        """Chain through slot 0 only: abs[k+Win-1] = inv(rel[k,0]) abs[k] (a drift-prone baseline)."""
        win = self.window_size
        poses = [torch.cat([p, p.new_tensor([[0, 0, 0, 1]])]) for p in self.state.online[:win]]
        for k in range(1, len(self.state.relative)):
            r = self.state.relative[k][0]
            r44 = torch.cat([r, r.new_tensor([[0, 0, 0, 1]])])
            poses.append(torch.linalg.inv(r44) @ poses[k])
        return torch.stack(poses)[:, :3]

    def camera_map(self, poses_w2c: torch.Tensor) -> torch.Tensor:
        """[N,9] encodings re-based on frame 0: t_i = -R_i (C_i - C_0), q_i = quat(R_i R_0^T), per-frame fovs."""
        R = poses_w2c[:, :3, :3]
        C = _centre(poses_w2c)
        t = -(R @ (C - C[:1]))[..., 0]
        q = rotmat_to_quat_xyzw(R @ R[:1].transpose(-1, -2))
        return torch.cat([t, q, self.frame_fovs()], dim=-1)
