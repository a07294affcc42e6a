"""The ROS front end with a loop-closing backend: /tf is map -> odom -> camera (REP 105), their product is the
corrected pose on ~pose, odom -> camera stays the backend's own odometry, and ~path ends as the corrected
trajectory (revisions included). The frames go as stand-in ROS messages through the node pipeline (the correction
travels on each result, `T_map_odom`); real ROS 1 message classes, the publisher the node uses, no ROS master."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from recon.geometry import quat_xyzw_to_rotmat
from recon.map import MappedBackend, OdometryRecorder
from recon.nodes.ros.core import Output, ResultPublisher, RosNodeConfig, ns_to_sec_nsec
from recon.nodes.ros.frontend import RosFrontEnd
from recon.nodes.ros.system import INSTALL_HINT, enable_system_ros
from recon.types import Frame
from tests.nodes.ros_fake_msgs import FrontEndRun, depth_msg, image_msg, info_msg
from tests.recon.map._loop import DriftingBackend, OraclePointMaps, loop_frames

pytestmark = pytest.mark.timeout(300)


class _Sent:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def publish(self, msg: Any) -> None:
        self.sent.append(msg)


class _Publisher(ResultPublisher):
    def __init__(self) -> None:
        enable_system_ros()
        try:
            from geometry_msgs.msg import PoseStamped, TransformStamped
            from nav_msgs.msg import Path
            from sensor_msgs.msg import PointCloud2, PointField
            from tf2_msgs.msg import TFMessage
        except ImportError as e:
            pytest.fail(f"ROS message packages missing ({e}); install: {INSTALL_HINT}")
        self.front: RosFrontEnd | None = None
        self._msgs = {"PoseStamped": PoseStamped, "TransformStamped": TransformStamped, "Path": Path,
                      "PointCloud2": PointCloud2, "PointField": PointField, "TFMessage": TFMessage}
        self.pose_pub, self.tf_pub, self.path_pub, self.points_pub = _Sent(), _Sent(), _Sent(), _Sent()

    def _stamp(self, t_ns: int) -> Any:
        sec, nsec = ns_to_sec_nsec(t_ns)
        return SimpleNamespace(secs=sec, nsecs=nsec)


def _matrix(translation: Any, rotation: Any) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = quat_xyzw_to_rotmat(np.array([rotation.x, rotation.y, rotation.z, rotation.w]))
    T[:3, 3] = translation.x, translation.y, translation.z
    return T


def _stream(config: RosNodeConfig, backend: Any, frames: list[Frame]) -> tuple[list[Output], _Publisher]:
    """The frames as ROS messages (rgb8, 32FC1 depth with the same stamp, CameraInfo) through the front end."""
    pub = _Publisher()
    run = FrontEndRun(replace(config, camera_info_topic="/info", depth_topic="/depth", queue_size=len(frames)),
                      backend, publish=pub.publish)
    pub.front = run.front
    run.front.on_camera_info(info_msg(frames[0].width, frames[0].height, K=frames[0].K))
    for f in frames:
        run.front.on_depth(depth_msg(f.depth, f.t_ns, "32FC1"))
        run.front.on_image(image_msg(f.image, f.t_ns))
        run.wait_taken()  # paired with its depth before the next depth arrives (a camera's pace)
    outs = run.finish(timeout=240)
    assert run.rc == 0
    return outs, pub


def test_a_closing_loop_publishes_map_odom_camera_and_the_corrected_path() -> None:
    frames, gt = loop_frames(depth=True)
    tap = OdometryRecorder(DriftingBackend(OraclePointMaps(gt, units=1.0, metric=True)))
    mapped = MappedBackend(tap)
    outs, pub = _stream(RosNodeConfig(backend="oracle", map_frame="world", odom_frame="odom1", camera_frame="cam"),
                        mapped, frames)
    assert len(mapped.loops) >= 1 and any(o.result.is_update for o in outs)
    assert len(pub.tf_pub.sent) == len(outs)
    jumps = []
    for out, tf_msg, pose_msg in zip(outs, pub.tf_pub.sent, pub.pose_pub.sent, strict=True):
        a, b = tf_msg.transforms
        assert (a.header.frame_id, a.child_frame_id, b.header.frame_id, b.child_frame_id) == (
            "world", "odom1", "odom1", "cam")
        T_map_odom = _matrix(a.transform.translation, a.transform.rotation)
        T_odom_cam = _matrix(b.transform.translation, b.transform.rotation)
        pose = _matrix(pose_msg.pose.position, pose_msg.pose.orientation)
        np.testing.assert_allclose(T_map_odom @ T_odom_cam, pose, atol=1e-5)  # float64 -> message -> float64
        if not out.result.is_update:  # odom -> camera is the backend's own (drifting) odometry
            np.testing.assert_allclose(T_odom_cam, tap.poses[out.result.seq], atol=1e-5)
        jumps.append(np.linalg.norm(T_map_odom[:3, 3]))
    assert jumps[0] < 1e-9 and max(jumps) > 0.02  # the correction starts at identity and moves at the loop
    np.testing.assert_allclose(_matrix(pub.tf_pub.sent[-1].transforms[0].transform.translation,
                                       pub.tf_pub.sent[-1].transforms[0].transform.rotation),
                               mapped.T_map_odom, atol=1e-5)
    final = mapped.corrected_trajectory()
    path = pub.path_pub.sent[-1].poses
    assert len(path) == len(final)
    for p, seq in zip(path, sorted(final), strict=True):
        np.testing.assert_allclose(_matrix(p.pose.position, p.pose.orientation), final[seq], atol=1e-5)


def test_a_backend_without_a_map_keeps_the_single_map_to_camera_tf() -> None:
    frames, gt = loop_frames(depth=True)
    _, pub = _stream(RosNodeConfig(backend="oracle", camera_frame="cam"), OraclePointMaps(gt), frames[:1])
    (tf,) = pub.tf_pub.sent[0].transforms
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "cam")
