"""The model-boundary conversion to T_world_cam and the quaternion helpers beyond what the geometry fixture shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from recon.geometry.camera import depth_to_world_points as depth_to_world_points_T
from recon.geometry.pose_encoding import (
    T_world_cam_to_pose_encoding,
    mat_to_quat_xyzw,
    pose_encoding_to_extri_intri,
    pose_encoding_to_T_world_cam,
    quat_xyzw_to_mat,
    unproject_depth_map_to_point_map,
)


def _random_encodings(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, 3, generator=g, dtype=torch.float64)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64) * 3  # deliberately not unit length
    fov = 0.6 + torch.rand(n, 2, generator=g, dtype=torch.float64)
    return torch.cat([t, q, fov], dim=-1)


def test_T_world_cam_inverts_the_predicted_extrinsic() -> None:
    enc = _random_encodings(6).reshape(1, 6, 9)
    extr, K32 = pose_encoding_to_extri_intri(enc, (392, 518))
    T, K = pose_encoding_to_T_world_cam(enc, (392, 518))
    assert T.dtype == K.dtype == torch.float64 and T.shape == (1, 6, 4, 4) and K.shape == (1, 6, 3, 3)
    T_cam_world = torch.zeros_like(T)
    T_cam_world[..., :3, :] = extr
    T_cam_world[..., 3, 3] = 1
    torch.testing.assert_close(T @ T_cam_world, torch.eye(4, dtype=torch.float64).expand_as(T), atol=1e-12, rtol=0)
    torch.testing.assert_close(K.float(), K32)
    assert torch.all(K[..., 0, 2] == 259) and torch.all(K[..., 1, 2] == 196)


def test_any_leading_shape_and_round_trip() -> None:
    enc = _random_encodings(5, seed=1)
    T, K = pose_encoding_to_T_world_cam(enc, torch.tensor([294, 518]))
    assert T.shape == (5, 4, 4)
    back = T_world_cam_to_pose_encoding(T, K, (294, 518))
    q = enc[:, 3:7] / enc[:, 3:7].norm(dim=-1, keepdim=True)
    q = torch.where(q[:, 3:4] < 0, -q, q)
    torch.testing.assert_close(back[:, :3], enc[:, :3], atol=1e-12, rtol=0)
    torch.testing.assert_close(back[:, 3:7], q, atol=1e-12, rtol=0)
    torch.testing.assert_close(back[:, 7:], enc[:, 7:], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="9 values"):
        pose_encoding_to_T_world_cam(enc[:, :7], (294, 518))


def test_quaternions_match_scipy_and_are_standardised() -> None:
    rots = Rotation.random(50, random_state=3)
    R = torch.from_numpy(rots.as_matrix())
    q = mat_to_quat_xyzw(R)
    assert torch.all(q[:, 3] >= 0)
    want = torch.from_numpy(rots.as_quat())
    want = torch.where(want[:, 3:4] < 0, -want, want)
    torch.testing.assert_close(q, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(quat_xyzw_to_mat(-2.5 * q), R, atol=1e-12, rtol=0)


def test_unprojection_agrees_with_the_T_world_cam_helper() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 3, (2, 6, 8, 1)).astype(np.float32)
    enc = _random_encodings(2, seed=4).reshape(1, 2, 9)
    extr, K = pose_encoding_to_extri_intri(enc.float(), (6, 8))
    pts = unproject_depth_map_to_point_map(depth, extr[0], K[0])
    T, K64 = pose_encoding_to_T_world_cam(enc.float(), (6, 8))
    for i in range(2):
        other = depth_to_world_points_T(depth[i, ..., 0], K64[0, i].numpy(), T[0, i].numpy())
        np.testing.assert_allclose(pts[i], other, atol=1e-5)


def test_backproject_depth_torch_matches_numpy_per_frame_K_and_keeps_dtype() -> None:
    """The one unprojection on tensors (LASER engine, VGGT window model) as on arrays: float64 tensors give the
    numpy float64 result exactly (same operations, IEEE-rounded alike); a [S,3,3] K applies one K per frame."""
    from recon.geometry.camera import backproject_depth

    rng = np.random.default_rng(3)
    depth = rng.uniform(0.2, 5.0, (3, 5, 7))
    K = np.stack([np.array([[f, 0, 3.1 + i], [0, f * 1.1, 2.2], [0, 0, 1]]) for i, f in enumerate((4.0, 6.5, 9.0))])
    out = backproject_depth(torch.from_numpy(depth), torch.from_numpy(K))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (3, 5, 7, 3)
    for i in range(3):
        np.testing.assert_array_equal(out[i].numpy(), backproject_depth(depth[i], K[i]))
        assert not np.array_equal(out[i].numpy(), backproject_depth(depth[i], K[(i + 1) % 3]))
    shared = backproject_depth(torch.from_numpy(depth).float(), torch.from_numpy(K[0]).float())  # one K, float32
    assert shared.dtype == torch.float32
    exact = np.stack([backproject_depth(d, K[0]) for d in depth])
    # float32 rounds depth and K (2^-24 relative each) and each of ~3 operations; near u = cx the subtraction
    # cancels, so the bound is absolute: a few ulps of the largest operand, 8 * 2^-24 * max|point| (< 5e-6 here).
    np.testing.assert_allclose(shared.numpy(), exact, rtol=0, atol=8 * 2.0**-24 * np.abs(exact).max())
