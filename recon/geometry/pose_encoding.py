"""Camera conversions at the model boundary: VGGT's `absT_quaR_FoV` pose encoding, depth unprojection, T_world_cam.

The VGGT family predicts, per frame, 9 numbers `[tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w]`:
- `(R, t)` is the **camera-from-world** extrinsic `[R|t]` (OpenCV axes: x right, y down, z forward), R given as
  an xyzw quaternion (scalar last, the order recon uses everywhere);
- the world frame is camera 0 of the clip/session and the scale is normalised, not metric;
- `fov_h`, `fov_w` are full fields of view in radians; the principal point is always the image centre.

The functions named after the reference utilities (facebookresearch/vggt@44b3afb `vggt/utils/{pose_enc,rotation,
geometry}.py`) reproduce their numbers *including their dtype quirks*, because the golden `geometry` fixture records
them and downstream code (evaluation, the LASER alignment) was tuned against them:
- decoded intrinsics are float32 even for float64 input (the reference allocates them at the default dtype);
- the encoding is always float32 (it ends with a cast);
- the quaternion is chosen among four algebraic candidates by the largest denominator, then flipped to qw >= 0;
- unprojection uses integer pixel coordinates (no +0.5) and float32 camera points, then a float64 inverse.

Everything else in recon speaks `T_world_cam` (camera-to-world 4x4, float64): `pose_encoding_to_T_world_cam` is the
one conversion models and backends should call.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from recon.geometry.camera import backproject_depth
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)
_warn = WarnOnce(logger)

# Fields of view (rad) a decoded pose may have: the models predict them through a ReLU, so random weights can give 0,
# which would be an infinite focal length.
FOV_RANGE = (1e-3, 3.1)


def guard_fov(fov: torch.Tensor) -> torch.Tensor:
    """`fov` clamped to FOV_RANGE, with a one-time warning when any value was outside (the one FoV guard)."""
    lo, hi = FOV_RANGE
    if bool(((fov > lo) & (fov < hi)).all()):
        return fov
    _warn("fov", "predicted field of view %s rad is degenerate; clamped to [%g, %g]", fov.tolist(), lo, hi)
    return fov.clamp(lo, hi)

POSE_ENCODING_TYPE = "absT_quaR_FoV"
"""The only pose encoding the VGGT family (VGGT, StreamVGGT, InfiniteVGGT, HorizonStream) uses."""


def _image_hw(image_size_hw: tuple[int, int] | torch.Tensor | np.ndarray) -> tuple[float, float]:
    """(H, W) as Python floats, whatever container the caller used (tuple, tensor, array)."""
    h, w = (float(v) for v in (image_size_hw.tolist() if hasattr(image_size_hw, "tolist") else image_size_hw))
    return h, w


def intrinsics_from_fov(fov_hw: torch.Tensor, image_hw: tuple[int, int] | torch.Tensor | np.ndarray,
                        dtype: torch.dtype | None = None) -> torch.Tensor:
    """Pinhole K [...,3,3] from fields of view (fov_h, fov_w) [...,2] in radians: the one FoV-to-K rule.

    fx = (W/2)/tan(fov_w/2), fy = (H/2)/tan(fov_h/2), principal point (W/2, H/2). The focal lengths are computed
    in the FoV's dtype and stored as `dtype` (default: the FoV's), which is how the reference's float32 K of
    `pose_encoding_to_extri_intri` and recon's float64 K stay what they were.
    """
    H, W = _image_hw(image_hw)
    K = torch.zeros(fov_hw.shape[:-1] + (3, 3), dtype=dtype or fov_hw.dtype, device=fov_hw.device)
    K[..., 0, 0] = (W / 2.0) / torch.tan(fov_hw[..., 1] / 2.0)
    K[..., 1, 1] = (H / 2.0) / torch.tan(fov_hw[..., 0] / 2.0)
    K[..., 0, 2] = W / 2.0
    K[..., 1, 2] = H / 2.0
    K[..., 2, 2] = 1.0
    return K


def quat_xyzw_to_mat(quat_xyzw: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [...,3,3] from xyzw quaternions [...,4] that need not be unit length.

    The factor 2/|q|^2 replaces an explicit normalisation, so a network output can be decoded as is and a quaternion
    and its negative or any positive multiple give the same matrix.
    """
    x, y, z, w = quat_xyzw.unbind(-1)
    s = 2.0 / (quat_xyzw * quat_xyzw).sum(-1)
    rows = (
        1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(quat_xyzw.shape[:-1] + (3, 3))


def mat_to_quat_xyzw(R: torch.Tensor) -> torch.Tensor:
    """xyzw quaternions [...,4] with qw >= 0 from rotation matrices [...,3,3], in R's dtype.

    Each of |w|, |x|, |y|, |z| can be recovered from the diagonal; the other three components then follow from
    off-diagonal sums/differences divided by 4 times that magnitude. Dividing by the *largest* magnitude (floored at
    0.1) is the numerically stable choice; ties go to the first candidate in (w, x, y, z) order. For 180-degree
    rotations qw is ~1e-17 and the sign of the vector part is whatever that candidate gives: we keep it, so the result
    matches the reference encoder bit for bit where it matters.
    """
    m = R.reshape(R.shape[:-2] + (9,)).unbind(-1)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    # Four times the squared magnitudes of (w, x, y, z), evaluated left to right like the reference.
    four_sq = torch.stack(
        [1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], dim=-1
    )
    mag = torch.sqrt(torch.clamp(four_sq, min=0.0))  # 2 * |component|; negatives come only from rounding
    # Candidate c (rows, in w, x, y, z order) holds 4 * q_c * (w, x, y, z).
    cand = torch.stack(
        [
            torch.stack([mag[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, mag[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, mag[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, mag[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    floor = torch.tensor(0.1, dtype=mag.dtype, device=mag.device)
    cand = cand / (2.0 * torch.maximum(mag[..., None], floor))
    best = mag.argmax(dim=-1)
    q_wxyz = torch.gather(cand, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q_xyzw = q_wxyz[..., [1, 2, 3, 0]]
    return torch.where(q_xyzw[..., 3:4] < 0, -q_xyzw, q_xyzw)


def pose_encoding_to_extri_intri(
    pose_enc: torch.Tensor, image_size_hw: tuple[int, int] | torch.Tensor, build_intrinsics: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode `absT_quaR_FoV` [B,S,9] into camera-from-world extrinsics [B,S,3,4] and intrinsics [B,S,3,3].

    Extrinsics keep the input dtype; intrinsics are float32 whatever the input (the reference's quirk, recorded in
    the geometry fixture). fx = (W/2)/tan(fov_w/2), fy = (H/2)/tan(fov_h/2), principal point (W/2, H/2).
    """
    if pose_enc.dim() != 3 or pose_enc.shape[-1] != 9:
        raise ValueError(f"pose_enc must have shape [B,S,9], got {tuple(pose_enc.shape)}")
    t = pose_enc[..., :3]
    R = quat_xyzw_to_mat(pose_enc[..., 3:7])
    extrinsics = torch.cat([R, t[..., None]], dim=-1)
    if not build_intrinsics:
        return extrinsics, None
    return extrinsics, intrinsics_from_fov(pose_enc[..., 7:9], image_size_hw, torch.float32)


def extri_intri_to_pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size_hw: tuple[int, int] | torch.Tensor
) -> torch.Tensor:
    """Encode camera-from-world extrinsics [B,S,3,4] and intrinsics [B,S,3,3] as `absT_quaR_FoV` [B,S,9] float32.

    The principal point is dropped (the encoding assumes the centre), as is any skew; fov_h uses fy and H, fov_w
    uses fx and W. The result is float32 because the reference casts at the end and the fixture records that.
    """
    H, W = _image_hw(image_size_hw)
    fov_h = 2 * torch.atan((H / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsics[..., 0, 0])
    quat = mat_to_quat_xyzw(extrinsics[..., :3, :3])
    return torch.cat([extrinsics[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1).float()


def closed_form_inverse_se3(se3: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Inverse of [N,3,4] or [N,4,4] rigid transforms as [N,4,4]: (R, t) -> (R^T, -R^T t).

    Keeps the reference's dtype behaviour: the numpy path computes -R^T t in the input dtype and stores it in a
    float64 4x4 (so float32 input gives a float64 result with float32-rounded entries); the torch path stays in the
    input dtype.
    """
    R = se3[:, :3, :3]
    t = se3[:, :3, 3:]
    if isinstance(se3, np.ndarray):
        R_T = np.transpose(R, (0, 2, 1))
        out = np.tile(np.eye(4), (len(R), 1, 1))
        out[:, :3, :3] = R_T
        out[:, :3, 3:] = -np.matmul(R_T, t)
        return out
    R_T = R.transpose(1, 2)
    out = torch.eye(4, dtype=se3.dtype, device=se3.device).repeat(len(R), 1, 1)
    out[:, :3, :3] = R_T
    out[:, :3, 3:] = -torch.bmm(R_T, t)
    return out


def extrinsic_depth_to_points(
    depth_hw: np.ndarray, extrinsic_34: np.ndarray, K_33: np.ndarray, eps: float = 1e-8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(world points [H,W,3] float64, camera points [H,W,3] float32, valid mask depth > eps) for one frame.

    `extrinsic_34` is camera-from-world. Zero depth is not masked in the points (it lands on the camera centre);
    callers use the mask.
    """
    depth_hw = np.asarray(depth_hw)
    valid = depth_hw > eps
    pts_cam = backproject_depth(depth_hw, np.asarray(K_33), np.float32)
    T_world_cam = closed_form_inverse_se3(np.asarray(extrinsic_34)[None])[0]
    pts_world = np.dot(pts_cam, T_world_cam[:3, :3].T) + T_world_cam[:3, 3]
    return pts_world, pts_cam, valid


def unproject_depth_map_to_point_map(
    depth_shw1: np.ndarray | torch.Tensor,
    extrinsics_s34: np.ndarray | torch.Tensor,
    intrinsics_s33: np.ndarray | torch.Tensor,
) -> np.ndarray:
    """World points [S,H,W,3] (float64) from depth [S,H,W] or [S,H,W,1], camera-from-world extrinsics and K.

    Depth-plus-camera points are usually more accurate than VGGT's point head, which is why viewers default to them.
    """
    arrays = [x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
              for x in (depth_shw1, extrinsics_s34, intrinsics_s33)]
    depth, extr, intr = arrays
    if depth.ndim == 4:
        depth = depth[..., 0]
    return np.stack([extrinsic_depth_to_points(depth[i], extr[i], intr[i])[0] for i in range(depth.shape[0])], axis=0)


def pose_encoding_to_T_world_cam(
    pose_enc: torch.Tensor, image_hw: tuple[int, int] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """recon's convention from a pose encoding [...,9]: (T_world_cam [...,4,4], K [...,3,3]), both float64.

    The model predicts camera-from-world; every consumer downstream (trajectories, viewers, alignment) wants
    camera-to-world, so the inversion happens here, once, in float64 (a float32 inverse would put ~1e-7 relative
    error into every pose of a long trajectory before any composition).
    """
    if pose_enc.shape[-1] != 9:
        raise ValueError(f"pose_enc must end in 9 values, got shape {tuple(pose_enc.shape)}")
    enc = pose_enc.detach().to(torch.float64)
    lead = enc.shape[:-1]
    R_cam_world = quat_xyzw_to_mat(enc[..., 3:7])
    t_cam_world = enc[..., :3]
    T = torch.zeros(lead + (4, 4), dtype=torch.float64, device=enc.device)
    R_world_cam = R_cam_world.transpose(-1, -2)
    T[..., :3, :3] = R_world_cam
    T[..., :3, 3] = -(R_world_cam @ t_cam_world[..., None])[..., 0]
    T[..., 3, 3] = 1.0
    return T, intrinsics_from_fov(enc[..., 7:9], image_hw)


def T_world_cam_to_pose_encoding(
    T_world_cam: torch.Tensor, K: torch.Tensor, image_hw: tuple[int, int] | torch.Tensor
) -> torch.Tensor:
    """Inverse of `pose_encoding_to_T_world_cam` for [...,4,4] poses and [...,3,3] intrinsics: [...,9] float64.

    Used to feed known cameras to models that accept pose conditioning and to build test cases; the quaternion
    follows the same candidate rule and qw >= 0 standardisation as `mat_to_quat_xyzw`.
    """
    T = T_world_cam.to(torch.float64)
    K = K.to(torch.float64)
    R_cam_world = T[..., :3, :3].transpose(-1, -2)
    t_cam_world = -(R_cam_world @ T[..., :3, 3:4])[..., 0]
    H, W = _image_hw(image_hw)
    fov_h = 2 * torch.atan((H / 2) / K[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / K[..., 0, 0])
    quat = mat_to_quat_xyzw(R_cam_world)
    return torch.cat([t_cam_world, quat, fov_h[..., None], fov_w[..., None]], dim=-1)
