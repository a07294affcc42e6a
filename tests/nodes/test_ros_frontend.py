"""The ROS front end through the shared node pipeline (no ROS needed): stand-in ROS messages go into the push source,
the real camera node streams them over inproc:// (or tcp:// to a `recon node recon` process) to a ReconNode, and the
Outputs an adapter would publish come back through the result subscriber."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recon.calib import Undistorter
from recon.datasets.ros_msgs import camera_info_from_msg
from recon.errors import BackendError, ConfigError
from recon.nodes.pipeline import free_port, node_command
from recon.nodes.ros.core import RosNodeConfig, unpack_rgb
from recon.nodes.ros.frontend import RosFrontEnd, RosInputs, RosResults, remote_node
from recon.nodes.sources import PushSource
from recon.nodes.transport import request
from recon.types import Frame, FrameResult
from tests.nodes.ros_fake_backend import GRID_H, GRID_W, FakeBackend, pose_for
from tests.nodes.ros_fake_msgs import FrontEndRun, depth_msg, image_msg, info_msg, wait_for

pytestmark = pytest.mark.timeout(120)

RNG = np.random.default_rng(1)


def _rgb(h: int = 5, w: int = 7) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _config(**cfg: Any) -> RosNodeConfig:
    cfg.setdefault("queue_size", 16)  # nothing dropped: the tests push faster than the pipeline takes
    return RosNodeConfig(backend="ros_fake", **cfg)


class Recording(FakeBackend):
    """The fake backend, keeping every frame it was stepped with (as the ReconNode decoded it off the wire)."""

    def __init__(self, lag: int = 0) -> None:
        super().__init__(lag)
        self.frames: list[Frame] = []

    def step(self, frame: Frame) -> list[FrameResult]:
        self.frames.append(frame)
        return super().step(frame)


# ------------------------------------------------------------------------------------------- push source


def test_push_source_keeps_the_newest_items_counts_drops_and_drains_after_close() -> None:
    source = PushSource("s", lambda item, seq: None if item == "bad" else Frame("s", seq, item, np.zeros((2, 2, 3),
                                                                                                      np.uint8)),
                        capacity=2)
    assert [source.push(t) for t in (1, 2, 3)] == [0, 1, 2]  # 1 is dropped: 2 and 3 wait
    assert source.counts() == (3, 3) and source.drops == 1  # waiting items count as dropped until taken
    assert (source.take(0.0).seq, source.take(0.0).t_ns) == (1, 3)
    assert source.take(0.0) is None and not source.finished
    source.push("bad")
    assert source.take(0.0) is None  # refused by to_frame: the caller counts why
    source.push(9)
    source.close()
    assert source.push(10) == -1 and not source.finished  # closed: no more input, what waits is still taken
    assert source.take(5.0).t_ns == 9 and source.finished and source.counts() == (5, 1)
    with pytest.raises(ConfigError):
        PushSource("s", lambda item, seq: None, capacity=0)


def test_push_source_wakes_a_waiting_camera_node_at_the_push() -> None:
    """The camera node waits on a live source for its next frame (not on a socket poll that ends later)."""
    import threading

    source = PushSource("s", lambda item, seq: None)
    assert source.wait_frame(0.01) is False
    timer = threading.Timer(0.05, source.push, ["x"])
    timer.start()
    assert source.wait_frame(10.0) is True  # the push came during the wait
    timer.join()
    source.take(0.0)
    source.close()
    assert source.wait_frame(10.0) is False and source.finished  # a closed, empty source does not wait


# -------------------------------------------------------------------------------------------- depth


def _inputs(**cfg: Any) -> RosInputs:
    return RosInputs(_config(camera_info_topic="", depth_topic="/depth", **cfg), PushSource("ros", lambda m, s: None))


def test_colour_takes_the_nearest_depth_within_slop() -> None:
    inputs = _inputs(depth_slop=0.01, depth_wait=0.0)
    rgb = _rgb(4, 6)
    inputs.on_depth(depth_msg(np.full((4, 6), 1000, np.uint16), 1_000_000_000))
    inputs.on_depth(depth_msg(np.full((4, 6), 3000, np.uint16), 1_005_000_000))
    frame = inputs.frame_from_msg(image_msg(rgb, 1_004_000_000), 0)
    np.testing.assert_allclose(frame.depth, 3.0)  # 1 ms away beats 4 ms away
    frame = inputs.frame_from_msg(image_msg(rgb, 1_030_000_000), 1)  # nothing within 10 ms: no depth, warned once
    assert frame.depth is None and inputs.faults.counts == {"no_depth": 1}
    inputs.on_depth(depth_msg(np.full((2, 3), 2000, np.uint16), 2_000_000_000))  # half resolution: resampled
    frame = inputs.frame_from_msg(image_msg(rgb, 2_000_000_000), 2)
    assert frame.depth.shape == (4, 6) and np.allclose(frame.depth, 2.0)
    assert inputs.faults.counts["depth_size"] == 1


def test_colour_waits_briefly_for_depth_arriving_after_it() -> None:
    import threading

    inputs = _inputs(depth_wait=5.0)
    timer = threading.Timer(0.1, inputs.on_depth, [depth_msg(np.full((4, 6), 500, np.uint16), 7)])
    timer.start()
    frame = inputs.frame_from_msg(image_msg(_rgb(4, 6), 7), 0)
    timer.join()
    np.testing.assert_allclose(frame.depth, 0.5)


def test_rgbd_frames_reach_the_backend_with_their_depth() -> None:
    backend = Recording()
    run = FrontEndRun(_config(camera_info_topic="", depth_topic="/depth"), backend)
    run.front.on_depth(depth_msg(np.full((8, 12), 1500, np.uint16), 42))
    run.front.on_image(image_msg(_rgb(8, 12), 42))
    assert len(run.finish()) == 1
    np.testing.assert_allclose(backend.frames[0].depth, 1.5)  # f4 on the wire: metres exactly as decoded


# -------------------------------------------------------------------------------------------- pipeline


def test_waits_for_camera_info_then_scales_K_to_the_image() -> None:
    backend = Recording()
    run = FrontEndRun(_config(), backend)
    run.front.on_image(image_msg(_rgb(48, 64), 5))
    wait_for(lambda: run.front.inputs.waiting_for_info == 1)
    run.front.on_camera_info(info_msg(128, 96))  # calibrated at twice the streamed resolution
    run.front.on_image(image_msg(_rgb(48, 64), 7))
    (out,) = run.finish()
    assert run.rc == 0
    assert (out.t_ns, out.result.seq, out.camera_frame) == (7, 1, "cam")  # seq 0 was the dropped image
    (frame,) = backend.frames
    np.testing.assert_allclose(frame.K, [[25, 0, 32], [0, 25, 24], [0, 0, 1]], atol=1e-9)
    assert run.front.faults.counts == {"no_camera_info": 1}


@pytest.mark.parametrize("undistort", [True, False])
def test_frames_of_a_distorted_camera_info_reach_the_backend_undistorted(undistort: bool) -> None:
    """Barrel distortion in CameraInfo: the camera node remaps the frame to the pinhole camera before the wire (the
    rule of every front end), or sends it as captured with `undistort=False`."""
    backend = Recording()
    run = FrontEndRun(_config(undistort=undistort), backend)
    distorted = info_msg(64, 48, D=(-0.3, 0.1, 0.0, 0.0, 0.0))
    run.front.on_camera_info(distorted)
    rgb = RNG.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    run.front.on_image(image_msg(rgb, 11))
    assert len(run.finish()) == 1
    (frame,) = backend.frames
    if not undistort:
        np.testing.assert_array_equal(frame.image, rgb)
        np.testing.assert_allclose(frame.K, [[50, 0, 32], [0, 50, 24], [0, 0, 1]])
        return
    reference = Undistorter(camera_info_from_msg(distorted))
    np.testing.assert_array_equal(frame.image, reference.image(rgb))
    np.testing.assert_allclose(frame.K, reference.K_new)
    assert not np.array_equal(frame.image, rgb)


def test_repeated_camera_info_keeps_its_object_and_a_changed_one_replaces_it() -> None:
    inputs = RosInputs(_config(), PushSource("ros", lambda item, seq: None))
    inputs.on_camera_info(info_msg(64, 48, D=(-0.3, 0.0, 0.0, 0.0, 0.0)))
    first = inputs.camera_info
    inputs.on_camera_info(info_msg(64, 48, D=(-0.3, 0.0, 0.0, 0.0, 0.0)))  # drivers repeat it with every image
    assert inputs.camera_info is first  # so the undistortion maps are built once
    inputs.on_camera_info(info_msg(64, 48, fx=60.0))
    assert inputs.camera_info is not first and inputs.camera_info.K[0, 0] == 60.0
    inputs.on_camera_info(info_msg(64, 48, fx=0.0))  # an uncalibrated camera: counted, ignored
    assert inputs.camera_info.K[0, 0] == 60.0 and inputs.faults.counts == {"camera_info": 1}


def test_without_camera_info_topic_bad_images_are_counted_and_skipped() -> None:
    run = FrontEndRun(_config(camera_info_topic="", camera_frame="cam_x"))
    bad = image_msg(_rgb(), 1)
    bad.encoding = "nv12"  # not a ROS image encoding
    run.front.on_image(bad)
    run.front.on_image(image_msg(_rgb(), 2, ros2=True))
    (out,) = run.finish()
    assert (out.t_ns, out.result.seq, out.camera_frame) == (2, 1, "cam_x")
    assert run.front.faults.counts == {"bad_image": 1}


def test_lagging_results_keep_their_own_stamp_frame_id_and_colours_and_are_flushed_at_stop() -> None:
    run = FrontEndRun(_config(camera_info_topic=""), FakeBackend(lag=1))
    for i in range(3):
        run.front.on_image(image_msg(np.full((8, 12, 3), 10 * i, np.uint8), 100 + i, frame_id=f"f{i}"))
    outs = run.finish()  # the last result comes from the node's flush at stop
    assert [(o.t_ns, o.result.seq, o.camera_frame) for o in outs] == [(100, 0, "f0"), (101, 1, "f1"), (102, 2, "f2")]
    assert [{tuple(c) for c in unpack_rgb(o.cloud.points["rgb"])} for o in outs] == [{(0, 0, 0)}, {(10,) * 3},
                                                                                    {(20,) * 3}]
    assert [o.cloud.width for o in outs] == [GRID_H * GRID_W - 1] * 3  # the NaN point is not published
    for o in outs:
        np.testing.assert_array_equal(o.result.T_world_cam, pose_for(o.result.seq))
    assert len(run.front.path) == 3 and run.front.results.results_out == 3 and run.front.frames_in == 3
    values = dict(run.front.diagnostic_values())
    assert (values["frames_in"], values["results_out"], values["dropped"], values["node"]) == ("3", "3", "0",
                                                                                              "in-process")


def test_a_backend_refusing_frames_is_counted_by_the_node_and_the_run_goes_on() -> None:
    class Refusing(FakeBackend):
        def step(self, frame: Frame) -> list[FrameResult]:
            if frame.seq == 0:
                raise BackendError("not this one")
            return super().step(frame)

    run = FrontEndRun(_config(camera_info_topic=""), Refusing())
    run.front.on_image(image_msg(_rgb(), 1))
    run.front.on_image(image_msg(_rgb(), 2))
    (out,) = run.finish()
    assert out.result.seq == 1
    assert run.front.stats.node_status["faults"] == {"backend_error": 1}


def test_an_image_size_change_resets_the_session_and_starts_path_again() -> None:
    run = FrontEndRun(_config(camera_info_topic=""), FakeBackend(lag=1))
    for i, (h, w) in enumerate([(8, 12), (8, 12), (16, 24), (16, 24)]):
        run.front.on_image(image_msg(_rgb(h, w), 100 + i))
    outs = run.finish()
    # frame 1 was pending in the lagging backend: flushed at the size change, not lost; the new map starts at 2
    assert [o.result.seq for o in outs] == [0, 1, 2, 3]
    assert run.front.results.resets == 1 and [t for t, _ in run.front.path.poses()] == [102, 103]


def test_checkpoints_in_state_dir_let_a_restarted_ros_node_continue_its_map(tmp_path: Path) -> None:
    """`~state_dir`: the node session checkpoints the stream; a new ROS node on the same folder restores it and its
    poses continue (identity's drift is state: x = seq cm + drift x frames seen by the session)."""
    cfg = RosNodeConfig(backend="identity", backend_options={"drift": 0.5}, camera_info_topic="", queue_size=16,
                        state_dir=str(tmp_path), checkpoint_every=1)
    xs = []
    for run_index in range(2):
        run = FrontEndRun(cfg)
        for i in range(3):
            run.front.on_image(image_msg(_rgb(8, 12), 1000 * run_index + i))
        outs = run.finish()
        assert run.rc == 0 and [o.result.seq for o in outs] == [0, 1, 2]
        xs += [o.result.T_world_cam[0, 3] for o in outs]
    np.testing.assert_allclose(xs, [0.01 * (i % 3) + 0.5 * (i + 1) for i in range(6)])  # frames 4-6 of one session
    assert list(tmp_path.iterdir())


def test_unknown_backend_option_fails_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="unknown option lagg; valid options: lag"):
        RosFrontEnd(RosNodeConfig(backend="ros_fake", backend_options={"lagg": 1}))


def test_results_of_other_streams_are_not_published() -> None:
    """An external node publishes every stream it serves; the ROS node publishes its own stream only."""
    cfg = _config(stream_id="mine")
    sink = RosResults(cfg, RosInputs(cfg, PushSource("mine", lambda m, s: None)))
    published: list = []
    sink.publish = published.append
    K = np.array([[10.0, 0, 2], [0, 10.0, 1.5], [0, 0, 1]])
    sink.on_result(FrameResult("theirs", 0, 1, pose_for(0), K))
    sink.on_segment("theirs", 1, "resolution")
    sink.on_latency("theirs", 0, 1, 5.0)
    assert published == [] and sink.results_out == 0 and sink.resets == 0 and sink.node_latency.summary()["n"] == 0
    sink.on_result(FrameResult("mine", 0, 1, pose_for(0), K))
    assert [o.result.stream_id for o in published] == ["mine"] and len(sink.path) == 1


def test_remote_endpoints_default_to_the_recon_node_ports() -> None:
    node = remote_node(RosNodeConfig(node="tcp://10.0.0.5:6000"))
    assert (node.connect, node.publish, node.control) == ("tcp://10.0.0.5:6000", "tcp://10.0.0.5:6001",
                                                          "tcp://10.0.0.5:6002")
    assert remote_node(RosNodeConfig()) is None
    with pytest.raises(ConfigError, match="node_publish"):
        remote_node(RosNodeConfig(node="ipc:///tmp/recon"))


def test_waiting_for_an_external_node_that_is_not_up_ends_cleanly_on_stop() -> None:
    port = free_port()
    run = FrontEndRun(RosNodeConfig(backend="identity", node=f"tcp://127.0.0.1:{port}", camera_info_topic=""))
    run.front.on_image(image_msg(_rgb(), 1))
    assert run.finish(timeout=20) == [] and run.rc == 0
    assert run.front.stats.camera.sent == 0 and run.front.dropped() == 1  # the queued image is counted, not lost


def test_an_external_recon_node_over_tcp(tmp_path: Path) -> None:
    """`~node`: the same front end streams to a `recon node recon` process over tcp:// and publishes its results."""
    bind, publish, control = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    proc = subprocess.Popen(node_command("recon", "--bind", bind, "--publish", publish, "--control", control,
                                         "--backend", "identity", "-o", "points=true", "--heartbeat", "0.1",
                                         "--no-state"))
    try:
        cfg = RosNodeConfig(backend="identity", node=bind, node_publish=publish, node_control=control,
                            camera_info_topic="/info", queue_size=16)
        run = FrontEndRun(cfg)
        run.front.on_camera_info(info_msg(12, 8, fx=10.0))
        for i in range(4):
            run.front.on_image(image_msg(np.full((8, 12, 3), 30 * i, np.uint8), 500 + i, frame_id="cam_r"))
        wait_for(lambda: len(run.outs) == 4, timeout=60)
        outs = run.finish()
        assert run.rc == 0
        assert [(o.t_ns, o.result.seq, o.camera_frame) for o in outs] == [(500 + i, i, "cam_r") for i in range(4)]
        for i, o in enumerate(outs):
            assert o.result.T_world_cam[0, 3] == pytest.approx(0.01 * i)
            assert o.cloud.width == 96 and {tuple(c) for c in unpack_rgb(o.cloud.points["rgb"])} == {(30 * i,) * 3}
        status = run.front.stats.node_status["sessions"]["ros"]
        assert status["frames"] == 4 and status["live"]
    finally:
        import zmq

        ctx = zmq.Context()
        try:
            request(ctx, control, {"cmd": "shutdown"}, timeout_s=10)
        finally:
            ctx.term()
        assert proc.wait(timeout=30) == 0
