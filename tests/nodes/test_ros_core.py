"""The ROS-independent message half of the ROS node (shared by the rospy node and the rclpy adapter): the codec,
stamps, output fields, ~path, configuration and the ROS module finder; no ROS needed. The front end through the
pipeline is tests/nodes/test_ros_frontend.py."""

from __future__ import annotations

import argparse
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from recon.backends.options import parse_option_value
from recon.datasets.ros_msgs import (
    NS_PER_S,
    camera_info_from_msg,
    decode_compressed_image,
    decode_depth_image,
    decode_image,
    decode_raw_image,
    stamp_to_ns,
)
from recon.errors import ConfigError, ProtocolError
from recon.nodes.ros import cli
from recon.nodes.ros.core import (
    CLOUD_FIELDS,
    PathBuffer,
    RosNodeConfig,
    cloud_from_result,
    cloud_to_array,
    fill_cloud,
    fill_pose,
    fill_transform,
    ns_to_sec_nsec,
    pack_rgb,
    pose_fields,
    unpack_rgb,
)
from recon.nodes.ros.ros2 import config_with_ros2_params, parse_options_string
from recon.nodes.ros.system import SystemRosFinder, is_ros_name
from recon.types import FrameResult
from tests.nodes.ros_fake_backend import pose_for
from tests.nodes.ros_fake_msgs import depth_msg, info_msg

RNG = np.random.default_rng(0)


def _rgb(h: int = 5, w: int = 7) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ time


@pytest.mark.parametrize("t_ns", [0, 1, NS_PER_S - 1, NS_PER_S, 1_500_000_000 * NS_PER_S + 123_456_789])
def test_stamps_round_trip_ros1_and_ros2(t_ns: int) -> None:
    sec, nsec = ns_to_sec_nsec(t_ns)
    assert 0 <= nsec < NS_PER_S
    assert stamp_to_ns(SimpleNamespace(secs=sec, nsecs=nsec)) == t_ns
    assert stamp_to_ns(SimpleNamespace(sec=sec, nanosec=nsec)) == t_ns


def test_negative_stamp_is_rejected() -> None:
    with pytest.raises(ConfigError):
        ns_to_sec_nsec(-1)


# ---------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_decode_to_rgb_with_row_padding(encoding: str) -> None:
    rgb = _rgb()
    arr = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]),
           "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 9, np.uint8)])}[encoding]
    h, w, c = arr.shape
    step = w * c + 5  # padded rows, as some drivers send
    data = np.zeros((h, step), np.uint8)
    data[:, : w * c] = arr.reshape(h, w * c)
    out = decode_raw_image(encoding, h, w, step, False, data.tobytes())
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_mono_encodings_become_grey_rgb() -> None:
    grey = _rgb()[..., 0]
    h, w = grey.shape
    np.testing.assert_array_equal(decode_raw_image("mono8", h, w, w, False, grey.tobytes()),
                                  np.repeat(grey[..., None], 3, 2))
    wide = grey.astype(np.uint16) * 256 + 77  # low byte must not leak into the 8-bit image
    for big in (False, True):
        data = wide.astype(">u2" if big else "<u2").tobytes()
        out = decode_raw_image("16UC1", h, w, 2 * w, big, data)
        np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, 2))


@pytest.mark.parametrize(("encoding", "h", "w", "step", "nbytes", "match"), [
    ("nv12", 2, 2, 4, 8, "unsupported"),
    ("rgb8", 2, 2, 5, 10, "bad image geometry"),
    ("rgb8", 2, 2, 6, 11, "needs 12"),
    ("rgb8", 0, 2, 6, 0, "bad image geometry"),
])
def test_bad_raw_images_raise_protocol_errors(encoding: str, h: int, w: int, step: int, nbytes: int,
                                              match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_raw_image(encoding, h, w, step, False, bytes(nbytes))


def test_compressed_png_is_exact_and_jpeg_close() -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[...] = (200, 40, 90)
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    np.testing.assert_array_equal(decode_compressed_image("png", png.tobytes()), rgb)
    ok, jpg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    msg = SimpleNamespace(format="bgr8; jpeg compressed bgr8", data=jpg.tobytes())
    assert np.abs(decode_image(msg).astype(int) - rgb).max() <= 3
    ok, grey16 = cv2.imencode(".png", np.full((4, 4), 0x1234, np.uint16))
    np.testing.assert_array_equal(decode_compressed_image("png", grey16.tobytes()), np.full((4, 4, 3), 0x12))


def test_bad_compressed_images_raise_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="cannot decode"):
        decode_compressed_image("jpeg", b"not a jpeg")
    with pytest.raises(ProtocolError, match="compressedDepth"):
        decode_compressed_image("16UC1; compressedDepth", b"\x00" * 16)
    with pytest.raises(ProtocolError, match="unsupported"):
        decode_compressed_image("tiff", b"\x00" * 16)


@pytest.mark.parametrize("ros2", [False, True])
def test_camera_info_from_ros1_and_ros2_messages(ros2: bool) -> None:
    info = camera_info_from_msg(info_msg(64, 48, ros2=ros2))
    assert (info.width, info.height, info.frame_id) == (64, 48, "cam")
    np.testing.assert_array_equal(info.K, [[50, 0, 32], [0, 50, 24], [0, 0, 1]])
    bad = info_msg(64, 48, ros2=ros2, fx=0.0)  # an uncalibrated camera publishes K = 0
    with pytest.raises(ProtocolError, match="invalid K"):
        camera_info_from_msg(bad)


# ---------------------------------------------------------------------------------------------- outputs


def test_pose_fields_match_the_rotation() -> None:
    T = pose_for(7)
    (x, y, z), (qx, qy, qz, qw) = pose_fields(T)
    np.testing.assert_allclose([x, y, z], T[:3, 3])
    # Rebuild R from the quaternion by hand (xyzw): a different path than the one under test.
    R = np.array([[1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qz * qw), 2 * (qx * qz + qy * qw)],
                  [2 * (qx * qy + qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qx * qw)],
                  [2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)]])
    np.testing.assert_allclose(R, T[:3, :3], atol=1e-12)
    assert qw >= 0
    pose = SimpleNamespace(position=SimpleNamespace(), orientation=SimpleNamespace())
    fill_pose(pose, T)
    tf = SimpleNamespace(translation=SimpleNamespace(), rotation=SimpleNamespace())
    fill_transform(tf, T)
    assert (pose.position.x, pose.orientation.w) == (x, qw) and (tf.translation.z, tf.rotation.y) == (z, qy)


def test_pack_rgb_round_trip_and_layout() -> None:
    rgb = _rgb(4, 4).reshape(-1, 3)
    packed = pack_rgb(rgb)
    assert packed[0] == (int(rgb[0, 0]) << 16) | (int(rgb[0, 1]) << 8) | int(rgb[0, 2])
    np.testing.assert_array_equal(unpack_rgb(packed), rgb)


def _result(seq: int = 0, **kw: Any) -> FrameResult:
    return FrameResult("s", seq, 10 + seq, pose_for(seq), np.array([[10.0, 0, 2], [0, 10.0, 1.5], [0, 0, 1]]), **kw)


def test_cloud_drops_nonfinite_and_low_confidence_points_and_keeps_colours() -> None:
    pts = RNG.normal(size=(4, 5, 3)).astype(np.float32)
    pts[0, 0] = np.nan
    pts[1, 2, 2] = np.inf
    conf = np.ones((4, 5), np.float32)
    conf[3, :] = 0.1
    image = _rgb(4, 5)
    cloud = cloud_from_result(_result(points_world=pts, confidence=conf, image=image), min_confidence=0.5)
    assert cloud is not None
    keep = np.isfinite(pts).all(-1) & (conf >= 0.5)
    assert cloud.width == keep.sum() == 13
    np.testing.assert_allclose(np.stack([cloud.points["x"], cloud.points["y"], cloud.points["z"]], 1), pts[keep])
    np.testing.assert_array_equal(unpack_rgb(cloud.points["rgb"]), image[keep])


def test_cloud_stride_cap_colours_and_depth() -> None:
    pts = RNG.normal(size=(8, 10, 3)).astype(np.float32)
    assert cloud_from_result(_result(points_world=pts), stride=2).width == 20
    assert cloud_from_result(_result(points_world=pts), max_points=7).width == 7
    image = np.zeros((16, 20, 3), np.uint8)
    image[...] = (1, 2, 3)  # colours at twice the point grid's resolution: resampled as the PLY and Rerun sinks do
    cloud = cloud_from_result(_result(points_world=pts, image=image))
    assert {tuple(c) for c in unpack_rgb(cloud.points["rgb"])} == {(1, 2, 3)}
    grey = cloud_from_result(_result(points_world=pts))
    assert {tuple(c) for c in unpack_rgb(grey.points["rgb"])} == {(128, 128, 128)}
    assert cloud_from_result(_result()) is None
    depth = np.full((3, 4), 2.0, np.float32)
    depth[0, 0] = 0.0  # invalid depth must not become a point at the camera centre
    r = _result(depth=depth)
    cloud = cloud_from_result(r)
    assert cloud.width == 11
    xyz = np.stack([cloud.points["x"], cloud.points["y"], cloud.points["z"]], 1).astype(np.float64)
    np.testing.assert_allclose(((xyz - r.T_world_cam[:3, 3]) @ r.T_world_cam[:3, :3])[:, 2], 2.0, atol=1e-5)


def test_fill_cloud_and_read_back() -> None:
    cloud = cloud_from_result(_result(points_world=RNG.normal(size=(2, 3, 3)).astype(np.float32), image=_rgb(2, 3)))
    msg = SimpleNamespace()
    fill_cloud(msg, cloud, SimpleNamespace)
    assert (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_bigendian) == (1, 6, 16, 96, False)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == list(CLOUD_FIELDS)
    back = cloud_to_array(msg.fields, msg.point_step, msg.width, msg.height, msg.data)
    np.testing.assert_array_equal(back, cloud.points)
    with pytest.raises(ProtocolError):
        cloud_to_array(msg.fields[:3], 12, msg.width, 1, msg.data)


# ------------------------------------------------------------------------------------------------- state


def test_path_buffer_replaces_revisions_keeps_order_and_bound() -> None:
    path = PathBuffer(max_len=3)
    for seq in (0, 1, 2):
        path.add(_result(seq))
    revised = _result(1)
    revised.T_world_cam = pose_for(9)
    path.add(revised)
    assert [t for t, _ in path.poses()] == [10, 11, 12]
    np.testing.assert_array_equal(path.poses()[1][1], pose_for(9))
    path.add(_result(3))
    assert [t for t, _ in path.poses()] == [11, 12, 13]
    made = []
    first = path.messages(lambda t, T: made.append(t) or f"msg{t}")
    assert first == ["msg11", "msg12", "msg13"] and made == [11, 12, 13]
    path.add(_result(2))  # a revision rebuilds only its own message
    path.add(_result(4))  # and the oldest falls out
    assert path.messages(lambda t, T: made.append(t) or f"new{t}") == ["new12", "msg13", "new14"]
    assert made == [11, 12, 13, 12, 14]


# ------------------------------------------------------------------------------------------------ config


def test_config_params_override_flags_with_types_and_merge_options() -> None:
    base = RosNodeConfig(backend_options={"lag": 0, "keep": 1})
    server = {"map_frame": "odom", "queue_size": "4", "compressed": "true", "backend_options": {"lag": 2},
              "plugins": "a.b, c"}
    cfg = base.with_params(lambda name, default: server.get(name, default))
    assert (cfg.map_frame, cfg.queue_size, cfg.compressed, cfg.plugins) == ("odom", 4, True, ("a.b", "c"))
    assert cfg.backend_options == {"lag": 2, "keep": 1}
    assert base.map_frame == "map"  # the flags' config is not modified
    with pytest.raises(ConfigError, match="queue_size"):
        base.with_params(lambda name, default: "many" if name == "queue_size" else default)
    with pytest.raises(ConfigError, match="queue_size"):
        base.with_params(lambda name, default: 0 if name == "queue_size" else default)
    with pytest.raises(ConfigError, match="backend_options"):
        base.with_params(lambda name, default: "lag=1" if name == "backend_options" else default)


def test_option_values_parse() -> None:
    assert [parse_option_value(v) for v in ("3", "0.5", "true", "False", "none", "abc")] == [3, 0.5, True, False,
                                                                                            None, "abc"]
    assert parse_options_string("lag=1, mode=mono") == {"lag": 1, "mode": "mono"}
    with pytest.raises(ConfigError):
        parse_options_string("lag")


def test_ros2_parameters_are_declared_and_read_back() -> None:
    class FakeNode:
        def __init__(self, values: dict[str, Any]) -> None:
            self.values, self.declared = values, {}

        def declare_parameter(self, name: str, default: Any) -> SimpleNamespace:
            self.declared[name] = default
            return SimpleNamespace(value=self.values.get(name, default))

    node = FakeNode({"map_frame": "odom", "backend_options": "lag=2", "plugins": "x.y"})
    cfg = config_with_ros2_params(node, RosNodeConfig(plugins=("a",)))
    assert (cfg.map_frame, cfg.backend_options, cfg.plugins) == ("odom", {"lag": 2}, ("x.y",))
    assert node.declared["plugins"] == "a" and node.declared["backend_options"] == ""
    assert all(not isinstance(v, (tuple, dict)) for v in node.declared.values())


def test_cli_flags_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--backend", "ros_fake", "--plugin", "tests.nodes.ros_fake_backend", "-o", "lag=2",
                              "--compressed", "--camera-info-topic", "", "--node", "tcp://10.1.2.3:7000",
                              "--state-dir", "/tmp/x", "_map_frame:=odom", "__name:=r"])
    cfg = cli.config_from_args(args)
    assert (cfg.backend, cfg.backend_options, cfg.compressed, cfg.camera_info_topic, cfg.node, cfg.state_dir) == (
        "ros_fake", {"lag": 2}, True, "", "tcp://10.1.2.3:7000", "/tmp/x")
    assert args.ros_args == ["_map_frame:=odom", "__name:=r"]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        cli.config_from_args(parser.parse_args(["-o", "lag"]))
    # the backend flags of recon replay / live: options checked against the config, loop closure on for geometric
    with pytest.raises(ConfigError, match="unknown option lagg; valid options: lag"):
        cli.config_from_args(parser.parse_args(["--backend", "ros_fake", "-o", "lagg=1"]))
    assert cli.config_from_args(parser.parse_args([])).backend_options == {"loop_closure": True}
    assert cli.config_from_args(parser.parse_args(["--loop-closure", "off"])).backend_options == {}
    assert cli.ros_argv(args.ros_args) == ["recon", "_map_frame:=odom", "__name:=r"]
    ros2 = parser.parse_args(["--ros", "2", "--", "--ros-args", "-p", "map_frame:=odom"]).ros_args
    assert cli.ros_argv(ros2) == ["recon", "--ros-args", "-p", "map_frame:=odom"]
    late_flag = parser.parse_args(["_a:=1", "--backend", "y"]).ros_args  # argparse hides this mistake
    with pytest.raises(ConfigError, match="put recon flags first"):
        cli.ros_argv(late_flag)


def test_importing_the_package_and_cli_imports_no_ros() -> None:
    """A fresh interpreter: the CLI table and the core import neither ROS library nor install the finder."""
    code = ("import sys, recon.cli, recon.nodes.ros.cli, recon.nodes.ros.core, recon.nodes.ros.frontend; "
            "from recon.nodes.ros.system import SystemRosFinder; "
            "assert not {'rospy', 'rclpy', 'genpy'} & set(sys.modules), sorted(sys.modules); "
            "assert not any(isinstance(f, SystemRosFinder) for f in sys.meta_path)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------------------- ROS finder


def test_system_finder_serves_only_ros_names(tmp_path: Any) -> None:
    for name in ("rospy", "numpy", "sensor_msgs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    finder = SystemRosFinder([str(tmp_path)])
    assert finder.find_spec("rospy").origin == str(tmp_path / "rospy" / "__init__.py")
    assert finder.find_spec("sensor_msgs") is not None
    assert finder.find_spec("numpy") is None  # Debian's numpy must never shadow (or stand in for) the venv's
    assert finder.find_spec("rospy.impl") is None  # submodules resolve through the package, not here
    assert is_ros_name("tf2_msgs") and is_ros_name("std_srvs") and not is_ros_name("torch")


# ------------------------------------------------------------------------------------------------ depth


def test_depth_images_decode_to_metres_with_invalid_as_zero() -> None:
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    for big in (False, True):
        m = depth_msg(mm, 0, big=big)
        out = decode_depth_image(m.encoding, m.height, m.width, m.step, big, m.data)
        np.testing.assert_allclose(out, [[0, 1.0], [2.5, 65.535]], rtol=1e-6)
    metres = np.array([[np.nan, 1.5], [np.inf, -2.0]], np.float32)
    m = depth_msg(metres, 0, "32FC1")
    out = decode_depth_image(m.encoding, m.height, m.width, m.step, False, m.data)
    np.testing.assert_array_equal(out, [[0, 1.5], [0, 0]])
    with pytest.raises(ProtocolError, match="unsupported depth"):
        decode_depth_image("rgb8", 2, 2, 6, False, bytes(12))
