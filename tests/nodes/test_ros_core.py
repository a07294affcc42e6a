"""The ROS-independent core of the ROS node (shared by the rospy node and the rclpy adapter): no ROS needed."""

from __future__ import annotations

import argparse
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from recon.errors import ConfigError, ProtocolError
from recon.nodes.ros import cli
from recon.nodes.ros.core import (
    CLOUD_FIELDS,
    NS_PER_S,
    LatestQueue,
    PathBuffer,
    RosNodeConfig,
    RosNodeCore,
    camera_info_from_msg,
    cloud_from_result,
    cloud_to_array,
    decode_compressed_image,
    decode_depth_image,
    decode_raw_image,
    fill_cloud,
    fill_pose,
    fill_transform,
    image_msg_to_rgb,
    ns_to_sec_nsec,
    pack_rgb,
    parse_option_value,
    pose_fields,
    stamp_to_ns,
    unpack_rgb,
)
from recon.nodes.ros.ros2 import config_with_ros2_params, parse_options_string
from recon.nodes.ros.system import SystemRosFinder, is_ros_name
from recon.types import FrameResult
from tests.nodes.ros_fake_backend import GRID_H, GRID_W, FakeBackend, pose_for

RNG = np.random.default_rng(0)


def _rgb(h: int = 5, w: int = 7) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _image_msg(rgb: np.ndarray, t_ns: int, frame_id: str = "cam", ros2: bool = False) -> SimpleNamespace:
    sec, nsec = ns_to_sec_nsec(t_ns)
    stamp = SimpleNamespace(sec=sec, nanosec=nsec) if ros2 else SimpleNamespace(secs=sec, nsecs=nsec)
    h, w = rgb.shape[:2]
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp, frame_id=frame_id), height=h, width=w,
                           encoding="rgb8", is_bigendian=0, step=w * 3, data=rgb.tobytes())


def _info_msg(w: int, h: int, ros2: bool = False, fx: float = 50.0, D: tuple[float, ...] = (0.0,) * 5
              ) -> SimpleNamespace:
    K = [fx, 0, w / 2, 0, fx, h / 2, 0, 0, 1]
    fields = {"k": K, "d": list(D)} if ros2 else {"K": K, "D": list(D)}
    return SimpleNamespace(header=SimpleNamespace(frame_id="cam"), width=w, height=h, distortion_model="plumb_bob",
                           **fields)


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
    assert np.abs(image_msg_to_rgb(msg).astype(int) - rgb).max() <= 3
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
    info = camera_info_from_msg(_info_msg(64, 48, ros2=ros2))
    assert (info.width, info.height, info.frame_id) == (64, 48, "cam")
    np.testing.assert_array_equal(info.K, [[50, 0, 32], [0, 50, 24], [0, 0, 1]])
    bad = _info_msg(64, 48, ros2=ros2, fx=0.0)  # an uncalibrated camera publishes K = 0
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


def test_cloud_stride_cap_colour_fallbacks_and_depth() -> None:
    pts = RNG.normal(size=(8, 10, 3)).astype(np.float32)
    assert cloud_from_result(_result(points_world=pts), stride=2).width == 20
    assert cloud_from_result(_result(points_world=pts), max_points=7).width == 7
    frame_image = np.zeros((16, 20, 3), np.uint8)
    frame_image[...] = (1, 2, 3)  # the input frame, at twice the point grid's resolution
    cloud = cloud_from_result(_result(points_world=pts), image=frame_image)
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


def test_latest_queue_drops_oldest_and_counts() -> None:
    q = LatestQueue(2)
    assert q.put(1) and q.put(2)
    assert not q.put(3)
    assert q.dropped == 1
    assert [q.get(0.01), q.get(0.01), q.get(0.01)] == [2, 3, None]
    q.close()
    assert q.get(5.0) is None  # returns at once when closed


def _core(**cfg: Any) -> RosNodeCore:
    lag = cfg.pop("lag", 0)
    return RosNodeCore(RosNodeConfig(backend="ros_fake", **cfg), FakeBackend(lag=lag))


def test_core_waits_for_camera_info_then_scales_K_to_the_image() -> None:
    core = _core()
    core.on_image(_image_msg(_rgb(48, 64), 5))
    assert core.work(0.01) == [] and core.waiting_for_info == 1
    core.on_camera_info(_info_msg(128, 96))  # calibrated at twice the streamed resolution
    core.on_image(_image_msg(_rgb(48, 64), 7))
    (out,) = core.work(0.01)
    assert out.t_ns == 7 and out.result.seq == 0 and out.camera_frame == "cam"
    frame_K = out.result.K / np.array([[GRID_W / 64], [GRID_H / 48], [1]])  # the fake backend rescales K to its grid
    np.testing.assert_allclose(frame_K, [[25, 0, 32], [0, 25, 24], [0, 0, 1]], atol=1e-9)


@pytest.mark.parametrize("undistort", [True, False])
def test_core_undistorts_frames_of_a_distorted_camera_info(undistort: bool) -> None:
    """Barrel distortion in CameraInfo: the backend gets the frame remapped to the pinhole camera (as the camera
    node sends it), or as captured with `undistort=False`."""
    from recon.calib import Undistorter

    core = _core(undistort=undistort)
    seen: list = []
    step = core.backend.step
    core.backend.step = lambda frame: seen.append(frame) or step(frame)  # type: ignore[method-assign]
    info_msg = _info_msg(64, 48, D=(-0.3, 0.1, 0.0, 0.0, 0.0))
    core.on_camera_info(info_msg)
    rgb = RNG.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    core.on_image(_image_msg(rgb, 11))
    (out,) = core.work(0.01)
    (frame,) = seen
    if not undistort:
        np.testing.assert_array_equal(frame.image, rgb)
        np.testing.assert_allclose(frame.K, [[50, 0, 32], [0, 50, 24], [0, 0, 1]])
        return
    reference = Undistorter(camera_info_from_msg(info_msg))
    np.testing.assert_array_equal(frame.image, reference.image(rgb))
    np.testing.assert_allclose(frame.K, reference.K_new)
    assert not np.array_equal(frame.image, rgb)


def test_core_without_camera_info_topic_and_bad_messages() -> None:
    core = _core(camera_info_topic="", camera_frame="cam_x")
    core.on_camera_info(_info_msg(64, 48, fx=0.0))
    assert core.faults.counts == {"camera_info": 1}
    bad = _image_msg(_rgb(), 1)
    bad.encoding = "nv12"  # not a ROS image encoding
    core.on_image(bad)
    assert core.work(0.01) == []
    core.on_image(_image_msg(_rgb(), 2, ros2=True))
    (out,) = core.work(0.01)
    assert out.t_ns == 2 and out.result.seq == 0 and out.camera_frame == "cam_x"
    assert core.faults.counts == {"camera_info": 1, "bad_image": 1}


def test_core_lagging_results_keep_their_own_stamp_and_colours() -> None:
    core = _core(camera_info_topic="", lag=1)
    outs = []
    for i in range(3):
        img = np.full((8, 12, 3), 10 * i, np.uint8)
        core.on_image(_image_msg(img, 100 + i, frame_id=f"f{i}"))
        outs += core.work(0.01)
    outs += core.flush()
    assert [(o.t_ns, o.result.seq, o.camera_frame) for o in outs] == [(100, 0, "f0"), (101, 1, "f1"), (102, 2, "f2")]
    assert [{tuple(c) for c in unpack_rgb(o.cloud.points["rgb"])} for o in outs] == [{(0, 0, 0)}, {(10,) * 3},
                                                                                    {(20,) * 3}]
    assert len(core.path) == 3 and core.results_out == 3 and core.frames_in == 3


def test_core_survives_a_backend_refusing_a_frame() -> None:
    from recon.errors import BackendError

    class Refusing(FakeBackend):
        def step(self, frame: Any) -> list[FrameResult]:
            raise BackendError("resolution changed")

    core = RosNodeCore(RosNodeConfig(backend="x", camera_info_topic=""), Refusing())
    core.on_image(_image_msg(_rgb(), 1))
    assert core.work(0.01) == [] and core.faults.counts == {"backend": 1}


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
    args = parser.parse_args(["--backend", "ros_fake", "-o", "lag=2", "-o", "mode=x", "--compressed",
                              "--camera-info-topic", "", "_map_frame:=odom", "__name:=r"])
    cfg = cli.config_from_args(args)
    assert (cfg.backend, cfg.backend_options, cfg.compressed, cfg.camera_info_topic) == (
        "ros_fake", {"lag": 2, "mode": "x"}, True, "")
    assert args.ros_args == ["_map_frame:=odom", "__name:=r"]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        cli.config_from_args(parser.parse_args(["-o", "lag"]))
    assert cli.ros_argv(args.ros_args) == ["recon", "_map_frame:=odom", "__name:=r"]
    ros2 = parser.parse_args(["--ros", "2", "--", "--ros-args", "-p", "map_frame:=odom"]).ros_args
    assert cli.ros_argv(ros2) == ["recon", "--ros-args", "-p", "map_frame:=odom"]
    late_flag = parser.parse_args(["_a:=1", "--backend", "y"]).ros_args  # argparse hides this mistake
    with pytest.raises(ConfigError, match="put recon flags first"):
        cli.ros_argv(late_flag)


def test_importing_the_package_and_cli_imports_no_ros() -> None:
    """A fresh interpreter: the CLI table and the core import neither ROS library nor install the finder."""
    code = ("import sys, recon.cli, recon.nodes.ros.cli, recon.nodes.ros.core; "
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


def _depth_msg(depth: np.ndarray, t_ns: int, encoding: str = "16UC1", big: bool = False) -> SimpleNamespace:
    msg = _image_msg(np.zeros((1, 1, 3), np.uint8), t_ns)
    dt = {"16UC1": "u2", "32FC1": "f4"}[encoding]
    arr = depth.astype((">" if big else "<") + dt)
    msg.height, msg.width, msg.encoding, msg.is_bigendian = *depth.shape, encoding, int(big)
    msg.step, msg.data = depth.shape[1] * arr.itemsize, arr.tobytes()
    return msg


def test_depth_images_decode_to_metres_with_invalid_as_zero() -> None:
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    for big in (False, True):
        m = _depth_msg(mm, 0, big=big)
        out = decode_depth_image(m.encoding, m.height, m.width, m.step, big, m.data)
        np.testing.assert_allclose(out, [[0, 1.0], [2.5, 65.535]], rtol=1e-6)
    metres = np.array([[np.nan, 1.5], [np.inf, -2.0]], np.float32)
    m = _depth_msg(metres, 0, "32FC1")
    out = decode_depth_image(m.encoding, m.height, m.width, m.step, False, m.data)
    np.testing.assert_array_equal(out, [[0, 1.5], [0, 0]])
    with pytest.raises(ProtocolError, match="unsupported depth"):
        decode_depth_image("rgb8", 2, 2, 6, False, bytes(12))


def test_core_pairs_colour_with_the_nearest_depth_within_slop() -> None:
    core = _core(camera_info_topic="", depth_topic="/depth", depth_slop=0.01, depth_wait=0.0)
    rgb = _rgb(4, 6)
    core.on_depth(_depth_msg(np.full((4, 6), 1000, np.uint16), 1_000_000_000))
    core.on_depth(_depth_msg(np.full((4, 6), 3000, np.uint16), 1_005_000_000))
    frame = core.frame_from_msg(_image_msg(rgb, 1_004_000_000))
    np.testing.assert_allclose(frame.depth, 3.0)  # 1 ms away beats 4 ms away
    frame = core.frame_from_msg(_image_msg(rgb, 1_030_000_000))  # nothing within 10 ms: no depth, warned once
    assert frame.depth is None and core.faults.counts == {"no_depth": 1}
    core.on_depth(_depth_msg(np.full((2, 3), 2000, np.uint16), 2_000_000_000))  # half resolution: resampled
    frame = core.frame_from_msg(_image_msg(rgb, 2_000_000_000))
    assert frame.depth.shape == (4, 6) and np.allclose(frame.depth, 2.0)
    assert core.faults.counts["depth_size"] == 1


def test_core_waits_briefly_for_depth_arriving_after_the_colour_image() -> None:
    import threading

    core = _core(camera_info_topic="", depth_topic="/depth", depth_wait=5.0)
    timer = threading.Timer(0.1, core.on_depth, [_depth_msg(np.full((4, 6), 500, np.uint16), 7)])
    timer.start()
    frame = core.frame_from_msg(_image_msg(_rgb(4, 6), 7))
    timer.join()
    np.testing.assert_allclose(frame.depth, 0.5)


def test_core_resets_the_backend_when_the_image_size_changes() -> None:
    core = _core(camera_info_topic="", lag=1)
    outs = []
    for i, (h, w) in enumerate([(8, 12), (8, 12), (16, 24), (16, 24)]):
        core.on_image(_image_msg(_rgb(h, w), 100 + i))
        outs += core.work(0.01)
    # frame 1 was pending in the lagging backend: flushed at the size change, not lost; the new map starts at 2
    assert [o.result.seq for o in outs] == [0, 1, 2]
    assert core.resets == 1 and [t for t, _ in core.path.poses()] == [102]
