"""The REP 105 pieces of loop closure for the ROS node: map -> odom from the map layer, odom poses that stay
continuous across a correction, the corrected path with revisions."""

from __future__ import annotations

import numpy as np

from recon.geometry import Sim3, make_se3, quat_xyzw_to_rotmat, so3_exp
from recon.nodes.ros.map_frames import map_to_odom, odom_pose, tf_chain

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


def test_the_tf_chain_multiplies_back_to_the_corrected_pose_even_with_a_scale() -> None:
    C = Sim3(0.6, so3_exp(np.array([0.2, 0.1, -0.3])), np.array([-1.0, 0.5, 2.0]))
    T_map_cam = C.apply_poses(make_se3(so3_exp(np.array([0.3, 0.0, 0.1])), np.array([1.0, -2.0, 0.5])))
    T_map_odom, T_odom_cam = tf_chain(T_map_cam, C.matrix())
    np.testing.assert_allclose(T_map_odom[:3, :3], C.R, atol=1e-12)  # rigid: TF has no scale
    np.testing.assert_allclose(T_map_odom @ T_odom_cam, T_map_cam, atol=1e-9)
    np.testing.assert_allclose(T_odom_cam[:3, :3] @ T_odom_cam[:3, :3].T, np.eye(3), atol=1e-9)
