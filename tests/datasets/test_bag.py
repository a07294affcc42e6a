"""Bags through `recon replay`: a ROS 1 bag and a ROS 2 MCAP recording (written here with rosbags) holding the
bundled sample as colour, registered depth on a topic that comes *first*, an unrelated infrared image and a
CameraInfo stated at 640x480 for the 320x240 images.

Bound: the sample README states RGB-D replays of the sample with the geometric backend stay below 0.5 % of the path
length (ATE, SE(3)-aligned); the bag replays must meet it, run as RGB-D (metric), with K scaled to the images.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main
from recon.datasets import detect_layout, open_sequence
from recon.eval import evaluate_run
from recon.io.trajectory import read_tum_trajectory
from recon.types import CameraInfo
from tests.datasets.bags import write_rgbd_bag

pytestmark = pytest.mark.timeout(300)

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "sample"
FRAMES = 30
SAMPLE_ATE_BOUND_PCT = 0.5  # datasets/sample/README.md


@pytest.fixture(scope="module")
def sample() -> tuple[list, CameraInfo]:
    seq = open_sequence(SAMPLE, max_frames=FRAMES)
    return list(seq), seq.camera_info


@pytest.mark.parametrize(("ros1", "colour", "depth"), [(True, "rgb8", "16UC1"), (False, "jpeg", "32FC1")],
                         ids=["ros1-bag", "ros2-mcap"])
def test_bag_replays_as_rgbd_with_scaled_intrinsics(tmp_path: Path, sample: tuple, ros1: bool, colour: str,
                                                    depth: str, caplog: pytest.LogCaptureFixture) -> None:
    frames, info = sample
    bag = write_rgbd_bag(tmp_path / ("sample.bag" if ros1 else "sample_ros2"), frames, info.scaled(640, 480),
                         ros1=ros1, colour=colour, depth=depth)
    assert detect_layout(bag) == "bag"
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert main(["replay", str(bag), "--out", str(out), "--viewer", "none", "--no-progress"]) == 0
    assert "camera info is 640x480 but the images are 320x240" in caplog.text

    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_in"] == FRAMES and summary["extra"]["metric"] is True  # registered depth: RGB-D
    # The intrinsics the backend used are those of the images, not of the 640x480 CameraInfo.
    lines = [json.loads(x) for x in (out / "frames" / "frames.jsonl").read_text().splitlines()]
    grid_w = lines[0]["width"]
    np.testing.assert_allclose(np.asarray(lines[0]["K"])[0, 0], info.K[0, 0] * grid_w / info.width, rtol=1e-9)

    t_ns, T = read_tum_trajectory(out / "trajectory.tum")
    assert len(t_ns) == FRAMES
    metrics = evaluate_run(out / "trajectory.tum", SAMPLE / "groundtruth.txt", align="se3")
    assert metrics["num_matched"] == FRAMES
    assert metrics["ate_pct_of_length"] < SAMPLE_ATE_BOUND_PCT


def test_bare_mcap_file_and_topic_overrides(tmp_path: Path, sample: tuple) -> None:
    frames, info = sample
    folder = write_rgbd_bag(tmp_path / "rec", frames[:4], info, ros1=False)
    mcap = next(folder.glob("*.mcap"))
    for path in (folder, mcap):  # the rosbag2 folder, or its .mcap file on its own
        seq = open_sequence(path)
        assert seq.topic == "/camera/color/image_raw" and seq.has_depth
        assert len(list(seq)) == 4
        seq.close()
    mono = open_sequence(folder, topic="/camera/infra1/image_rect_raw", depth_topic="")
    got = list(mono)
    assert not mono.has_depth and got[0].depth is None
    np.testing.assert_array_equal(got[0].image[..., 0], frames[0].image[..., 1])  # the IR topic is green here
    mono.close()


def test_bag_without_colour_topic_fails_listing_topics(tmp_path: Path, sample: tuple,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    frames, info = sample
    only_depth = write_rgbd_bag(tmp_path / "depth_only.bag", frames[:3], info, ros1=True, colour=None,
                                extra_topics=False)
    with caplog.at_level(logging.ERROR):
        assert main(["replay", str(only_depth), "--out", str(tmp_path / "run"), "--viewer", "none",
                     "--no-progress"]) == 1
    assert "no colour image topic" in caplog.text
    assert "/camera/aligned_depth_to_color/image_raw (sensor_msgs/msg/Image)" in caplog.text
    assert "/camera/color/camera_info (sensor_msgs/msg/CameraInfo)" in caplog.text
    bag = write_rgbd_bag(tmp_path / "full.bag", frames[:3], info, ros1=True)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["replay", str(bag), "--topic", "/nope", "--out", str(tmp_path / "run2"), "--viewer", "none",
                     "--no-progress"]) == 1
    assert "/nope" in caplog.text and "/camera/color/image_raw (sensor_msgs/msg/Image)" in caplog.text


def test_unregistered_depth_is_left_out_unless_named(tmp_path: Path, sample: tuple,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    frames, info = sample
    bag = write_rgbd_bag(tmp_path / "unreg.bag", frames[:3], info, ros1=True, depth_topic="/camera/depth/image_raw",
                         depth_frame_id="camera_depth_optical_frame")
    with caplog.at_level(logging.WARNING):
        seq = open_sequence(bag)
    assert not seq.has_depth and "not registered" in caplog.text and "/camera/depth/image_raw" in caplog.text
    assert next(iter(seq)).depth is None
    seq.close()
    named = open_sequence(bag, depth_topic="/camera/depth/image_raw")
    got = list(named)
    assert named.has_depth and len(got) == 3
    np.testing.assert_allclose(got[0].depth, frames[0].depth, atol=5e-4)  # millimetre rounding
    named.close()


def test_distortion_in_the_bag_is_applied_before_the_backend(tmp_path: Path, sample: tuple) -> None:
    from recon.calib import Undistorter
    from recon.nodes.pipeline import run_pipeline
    from tests.nodes.test_nodes_inproc import Collect

    frames, info = sample
    distorted = CameraInfo(640, 480, info.scaled(640, 480).K, np.array([-0.2, 0.05, 0.0, 0.0, 0.0]))
    bag = write_rgbd_bag(tmp_path / "dist.bag", frames[:2], distorted, ros1=True, depth=None, extra_topics=False)
    sink = Collect()
    run_pipeline(str(bag), "identity", [sink], mode="inproc", backend_options={"points": True})
    expected = Undistorter(distorted.scaled(320, 240))
    first = sink.results[0]
    np.testing.assert_allclose(first.K, expected.K_new)
    np.testing.assert_array_equal(first.image, expected.image(frames[0].image))


def test_recon_live_plays_a_bag_with_a_named_topic(tmp_path: Path, sample: tuple) -> None:
    frames, info = sample
    bag = write_rgbd_bag(tmp_path / "live.bag", frames[:4], info, ros1=True)
    out = tmp_path / "live"
    assert main(["live", "--camera", str(bag), "--topic", "/camera/color/image_raw", "--depth-topic", "none",
                 "--backend", "identity", "--viewer", "none", "--out", str(out)]) == 0
    t_ns, _ = read_tum_trajectory(out / "trajectory.tum")
    assert list(t_ns) == [f.t_ns for f in frames[:4]]  # the header stamps, every frame
    lines = [json.loads(x) for x in (out / "frames" / "frames.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and not lines[0]["metric"]  # depth turned off: the identity backend got RGB only


def test_undecodable_image_stops_or_is_skipped_and_a_truncated_bag_is_an_error(tmp_path: Path, sample: tuple,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    frames, info = sample
    bag = write_rgbd_bag(tmp_path / "bad.bag", frames[:5], info, ros1=True, colour="jpeg", garbled=(2,))
    base = ["--viewer", "none", "--no-progress", "--backend", "identity", "--export", "none"]
    # Stops at frame 2 and writes the frames before it.
    assert main(["replay", str(bag), *base, "--out", str(tmp_path / "stop")]) == 1
    assert len(read_tum_trajectory(tmp_path / "stop" / "trajectory.tum")[0]) == 2
    summary = json.loads((tmp_path / "stop" / "summary.json").read_text())
    assert "/camera/color/image_raw/compressed#2" in summary["stopped_on_error"]
    assert main(["replay", str(bag), *base, "--on-error", "skip", "--out", str(tmp_path / "skip")]) == 0
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["frames_skipped"] == 1 and summary["frames_in"] == 4
    assert "compressed#2" in summary["skipped_paths"][0]

    truncated = tmp_path / "truncated.bag"
    truncated.write_bytes(bag.read_bytes()[: bag.stat().st_size // 3])
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["replay", str(truncated), *base, "--out", str(tmp_path / "t")]) == 1
    assert "truncated.bag" in caplog.text
