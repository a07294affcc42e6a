"""Camera-node sources: ROS 1 bags and rosbag2/MCAP written here with rosbags, camera-info files, live pacing."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from recon.errors import ConfigError, SequenceError
from recon.nodes.pipeline import run_pipeline
from recon.nodes.sources import PatternSource, as_live, load_camera_info, open_source

pytestmark = pytest.mark.timeout(60)

K = np.array([[50.0, 0, 16], [0, 50.0, 12], [0, 0, 1]])


def _images(n: int) -> list[np.ndarray]:
    return [PatternSource(n, 32, 24).image(i) for i in range(n)]


def _messages(typestore: object, images: list[np.ndarray], compressed: bool, ros1: bool) -> list[tuple]:
    types = typestore.types  # type: ignore[attr-defined]
    Time, Header = types["builtin_interfaces/msg/Time"], types["std_msgs/msg/Header"]
    out = []
    for i, img in enumerate(images):
        stamp = Time(sec=100 + i, nanosec=5)
        header = Header(seq=i, stamp=stamp, frame_id="cam") if ros1 else Header(stamp=stamp, frame_id="cam")
        if compressed:
            ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            msg = types["sensor_msgs/msg/CompressedImage"](header=header, format="png", data=buf.reshape(-1))
        else:
            bgr = np.ascontiguousarray(img[..., ::-1])
            msg = types["sensor_msgs/msg/Image"](header=header, height=24, width=32, encoding="bgr8", is_bigendian=0,
                                                 step=96, data=bgr.reshape(-1))
        out.append((int(stamp.sec * 1e9 + 5), msg))
    info_kw = {"D" if ros1 else "d": np.zeros(5), "K" if ros1 else "k": K.reshape(-1),
               "R" if ros1 else "r": np.eye(3).reshape(-1), "P" if ros1 else "p": np.zeros(12)}
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    info = types["sensor_msgs/msg/CameraInfo"](header=header, height=24, width=32, distortion_model="plumb_bob",
                                               binning_x=0, binning_y=0, roi=roi, **info_kw)
    return out, info


def write_bag(path: Path, images: list[np.ndarray], *, ros1: bool, compressed: bool) -> str:
    """A bag with an image topic and a camera_info topic (ROS 1 .bag, or rosbag2 with MCAP storage)."""
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    msgs, info = _messages(typestore, images, compressed, ros1)
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    topic = "/cam/image/compressed" if compressed else "/cam/image"
    if ros1:
        from rosbags.rosbag1 import Writer

        writer = Writer(path)
        ser = typestore.serialize_ros1
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
        ser = typestore.serialize_cdr
    with writer:
        c_img = writer.add_connection(topic, msgtype, typestore=typestore)
        c_info = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=typestore)
        writer.write(c_info, msgs[0][0] - 1, ser(info, "sensor_msgs/msg/CameraInfo"))
        for t, msg in msgs:
            writer.write(c_img, t, ser(msg, msgtype))
    return topic


@pytest.mark.parametrize(("ros1", "compressed"), [(True, False), (True, True), (False, False), (False, True)])
def test_bag_source_reads_images_stamps_and_camera_info(tmp_path: Path, ros1: bool, compressed: bool) -> None:
    images = _images(5)
    path = tmp_path / ("run.bag" if ros1 else "run2")
    topic = write_bag(path, images, ros1=ros1, compressed=compressed)
    src = open_source(str(path), topic=topic)
    try:
        assert not src.live and len(src) == 5
        np.testing.assert_allclose(src.camera_info.K, K)
        frames = list(src)
    finally:
        src.close()
    assert [f.seq for f in frames] == list(range(5))
    assert [f.t_ns for f in frames] == [(100 + i) * 10**9 + 5 for i in range(5)]
    for f, img in zip(frames, images, strict=True):
        np.testing.assert_array_equal(f.image, img)
        np.testing.assert_allclose(f.K, K)


def test_bag_through_the_pipeline_and_unknown_topic(tmp_path: Path) -> None:
    from tests.nodes.test_nodes_inproc import Collect

    write_bag(tmp_path / "b.bag", _images(6), ros1=True, compressed=True)
    sink = Collect()
    run_pipeline(str(tmp_path / "b.bag"), "identity", [sink], mode="inproc")
    assert [r.seq for r in sink.results] == list(range(6))
    assert sink.results[0].t_ns == 100 * 10**9 + 5
    with pytest.raises(SequenceError, match="topics: /cam/camera_info"):
        open_source(str(tmp_path / "b.bag"), topic="/nope")


def test_camera_info_files(tmp_path: Path) -> None:
    y = tmp_path / "cam.yaml"
    y.write_text("image_width: 32\nimage_height: 24\ncamera_name: front\ncamera_matrix:\n  rows: 3\n  cols: 3\n"
                 "  data: [50, 0, 16, 0, 50, 12, 0, 0, 1]\ndistortion_coefficients:\n  data: [0.1, 0, 0, 0, 0]\n")
    info = load_camera_info(str(y))
    np.testing.assert_allclose(info.K, K)
    assert info.frame_id == "front" and info.distortion[0] == pytest.approx(0.1)
    j = tmp_path / "cam.json"
    j.write_text(json.dumps({"width": 32, "height": 24, "K": K.tolist()}))
    assert load_camera_info(str(j)).width == 32
    j.write_text(json.dumps({"K": K.tolist()}))
    with pytest.raises(ConfigError, match="width and height"):
        load_camera_info(str(j))
    y.write_text("image_width: 32\n")
    with pytest.raises(ConfigError, match="camera_info YAML"):
        load_camera_info(str(y))


def test_as_live_drops_frames_nobody_takes() -> None:
    live = as_live(PatternSource(30, 8, 8), fps=500)
    try:
        got = live.read_latest(1.0)
        assert got is not None
        import time

        time.sleep(0.2)  # the feed runs on; only its newest frame is kept
        assert live.read_latest(1.0) is not None
        assert live.drops >= 10
    finally:
        live.close()


def test_bad_source_specs() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        open_source("/nonexistent/thing")
    with pytest.raises(ConfigError, match="pattern"):
        open_source("pattern:x:1")


def test_opencv_camera_path_reads_rgb_frames_live(tmp_path: Path) -> None:
    """The OpenCV capture path of `--source 0`, fed by a video file (no camera on CI): RGB order, capture stamps."""
    from recon.nodes.sources import open_camera

    path = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (32, 24))
    red = np.zeros((24, 32, 3), np.uint8)
    red[..., 0] = 250
    for _ in range(5):
        writer.write(cv2.cvtColor(red, cv2.COLOR_RGB2BGR))
    writer.release()
    live = open_camera(str(path))
    try:
        got = live.read_latest(5.0)
        assert got is not None
        img, t_ns, index = got
        assert img.shape == (24, 32, 3) and img[..., 0].mean() > 200 and img[..., 2].mean() < 50
        assert t_ns > 1_600_000_000 * 10**9 and index >= 0
    finally:
        live.close()
    with pytest.raises(SequenceError, match="cannot open camera"):
        open_camera(str(tmp_path / "missing.avi"))
