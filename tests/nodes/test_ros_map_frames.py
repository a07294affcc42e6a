"""The REP 105 pieces of loop closure for the ROS node: map -> odom from the map layer, odom poses that stay
continuous across a correction, the corrected path with revisions."""

from __future__ import annotations

import numpy as np

from recon.geometry import Sim3, make_se3, quat_xyzw_to_rotmat, so3_exp
from recon.nodes.ros.map_frames import CorrectedPath, map_to_odom, odom_pose
from recon.types import FrameResult

K = np.eye(3)


def test_map_to_odom_and_odom_poses_invert_the_correction() -> None:
    C = Sim3(1.5, so3_exp(np.array([0.1, -0.2, 0.3])), np.array([1.0, 2.0, -0.5]))
    T_odom_cam = make_se3(so3_exp(np.array([0.0, 0.4, 0.0])), np.array([0.3, 0.0, 2.0]))
    T_map_cam = C.apply_poses(T_odom_cam)
    tf = map_to_odom(C.matrix())
    np.testing.assert_allclose(quat_xyzw_to_rotmat(tf.rotation_xyzw), C.R, atol=1e-9)
    np.testing.assert_allclose(tf.translation, C.t)
    assert abs(tf.scale - 1.5) < 1e-12
    np.testing.assert_allclose(odom_pose(T_map_cam, C.matrix()), T_odom_cam, atol=1e-9)


def test_the_corrected_path_takes_revisions() -> None:
    path = CorrectedPath()
    for seq in range(3):
        path.on_result(FrameResult("cam", seq, seq * 10, make_se3(np.eye(3), np.array([seq, 0.0, 0.0])), K))
    assert not path.changed
    path.on_result(FrameResult("cam", 1, 10, make_se3(np.eye(3), np.array([1.0, 5.0, 0.0])), K, is_update=True))
    assert path.changed
    poses = path.poses()
    assert [t for t, _ in poses] == [0, 10, 20] and poses[1][1][1, 3] == 5.0 and not path.changed
    path.on_result(FrameResult("cam", 3, 30, np.eye(4), K, tracked=False))
    assert len(path.poses()) == 3
