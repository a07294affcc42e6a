"""`recon node ros` against a real roscore: synthetic images in, pose / path / points / tf out, the reconstruction
in the shared node pipeline (an in-process ReconNode, or a `recon node recon` process with `--node`).

Each test starts the recon node and a probe node (tests/nodes/ros_probe.py) as subprocesses on a roscore
that this module starts on a free loopback port with its own ROS_HOME; every process group is killed in
teardown. On Linux/Debian a missing ROS install is a failure (CI installs scripts/ros-packages.txt), not a skip.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recon.calib import Undistorter
from recon.nodes.ros.core import CLOUD_FIELDS, pose_fields
from recon.nodes.ros.system import INSTALL_HINT, SystemRosFinder, ros_folders
from recon.types import CameraInfo
from tests.nodes.ros_fake_backend import GRID_H, GRID_W, pose_for
from tests.nodes.ros_probe import HEIGHT, WIDTH, K, colour, make_rgb, stamp_ns

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "tests" / "nodes" / "ros_probe.py"

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/etc/debian_version").exists(),
                       reason="the ROS 1 test needs Debian's ros-core packages (Linux, Debian/Ubuntu only)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_tree(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGINT the process group (clean ROS shutdown), then SIGKILL whatever is left, descendants included.

    roslaunch starts rosmaster and rosout in sessions of their own, so they are collected by walking the
    process tree first rather than through the process group alone.
    """
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    _, alive = psutil.wait_procs(family, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "leaked ROS process"


@pytest.fixture(scope="module")
def roscore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A roscore on a free port; yields the environment that points nodes at it."""
    if shutil.which("roscore") is None or SystemRosFinder(ros_folders()).find_spec("rospy") is None \
            and importlib.util.find_spec("rospy") is None:
        pytest.fail(f"ROS 1 is not installed (roscore or rospy missing). Install: {INSTALL_HINT}")
    home = tmp_path_factory.mktemp("ros_home")
    port = _free_port()
    env = {**os.environ, "ROS_MASTER_URI": f"http://127.0.0.1:{port}", "ROS_IP": "127.0.0.1",
           "ROS_HOME": str(home), "ROS_LOG_DIR": str(home / "log"),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "RECON_LOG_LEVEL": "INFO", "OMP_NUM_THREADS": "1"}
    env.pop("ROS_HOSTNAME", None)
    log = open(home / "roscore.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(["roscore", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    master = xmlrpc.client.ServerProxy(env["ROS_MASTER_URI"])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                master.getPid("/pytest")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("roscore did not start:\n" + (home / "roscore.log").read_text()[-3000:])
                time.sleep(0.1)
        yield env
    finally:
        _kill_tree(proc)
        log.close()


@pytest.fixture
def launch(roscore: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start processes in their own sessions (logs in tmp_path); all are killed at the end of the test."""
    procs: list[tuple[subprocess.Popen, Any]] = []

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed in teardown
        proc = subprocess.Popen(cmd, env=roscore, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append((proc, log))
        return proc

    yield start
    for proc, log in procs:
        _kill_tree(proc)
        log.close()


def _set_params(env: dict[str, str], params: dict[str, Any]) -> None:
    """Write parameters with the master's XML-RPC API (keeps rospy out of the pytest process)."""
    master = xmlrpc.client.ServerProxy(env["ROS_MASTER_URI"])
    for key, value in params.items():
        code, msg, _ = master.setParam("/pytest", key, value)
        assert code == 1, msg


def _run(launch: Callable[..., subprocess.Popen], tmp_path: Path, node: str, node_args: list[str],
         probe_args: list[str], timeout: float = 40, stop_at: int | None = None,
         ) -> tuple[dict[str, list[dict[str, Any]]], subprocess.Popen]:
    """Start the recon node and the probe; return what the probe recorded, and the node's process.

    With `stop_at`, the node gets SIGTERM once the probe has that many poses (the probe keeps listening).
    """
    recon_node = launch("node", [sys.executable, "-m", "recon.cli", "node", "ros", "--backend", "ros_fake",
                                 "--plugin", "tests.nodes.ros_fake_backend", "--image-topic", "/cam/image",
                                 "--camera-info-topic", "/cam/camera_info", "--queue-size", "16",
                                 *node_args, f"__name:={node}"])
    out, ready = tmp_path / "rec.json", tmp_path / "ready"
    if stop_at is not None:
        probe_args = [*probe_args, "--ready-at", str(stop_at), "--ready-file", str(ready)]
    probe = launch("probe", [sys.executable, str(PROBE), "--node", "/" + node, "--out", str(out),
                             "--timeout", str(timeout - 5), *probe_args])
    deadline = time.monotonic() + timeout
    stopped = False
    while probe.poll() is None and (stopped or recon_node.poll() is None) and time.monotonic() < deadline:
        if stop_at is not None and not stopped and ready.exists():
            recon_node.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(0.05)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(tmp_path.glob("*.log")))
    assert stopped or recon_node.poll() is None, f"recon node exited early:\n{logs}"
    assert probe.returncode == 0 and out.exists(), f"probe failed:\n{logs}"
    return json.loads(out.read_text()), recon_node


def _stop(node: subprocess.Popen, log: Path, signalled: bool = False) -> str:
    """SIGTERM the node (unless `signalled` already), check it exits cleanly, return its log."""
    if not signalled and node.poll() is None:
        node.send_signal(signal.SIGTERM)
    assert node.wait(timeout=15) == 0, log.read_text()[-4000:]
    return log.read_text()


def _check_pose(rec: dict[str, Any], seq: int) -> None:
    pos, quat = pose_fields(pose_for(seq))
    np.testing.assert_allclose(rec["position"], pos, atol=1e-12)
    np.testing.assert_allclose(rec["orientation"], quat, atol=1e-12)


def test_ros_node_publishes_pose_path_points_tf(launch: Callable[..., subprocess.Popen], roscore: dict[str, str],
                                                tmp_path: Path) -> None:
    """rgb8 images: every output carries the image's stamp, the frames from the parameter server, exact poses."""
    n = 5
    _set_params(roscore, {"/recon_a/map_frame": "odom_a", "/recon_a/cloud_stride": 1})
    rec, node = _run(launch, tmp_path, "recon_a", [], ["--count", str(n), "--encoding", "rgb8", "--frame-id", "cam_a",
                                                       "--diagnostics"])
    stamps = [stamp_ns(i) for i in range(n)]

    assert [p["stamp"] for p in rec["pose"]] == stamps
    assert {p["frame_id"] for p in rec["pose"]} == {"odom_a"}
    for i, p in enumerate(rec["pose"]):
        _check_pose(p, i)

    tf = [t for t in rec["tf"] if t["child"] == "cam_a"]
    assert [t["stamp"] for t in tf] == stamps
    assert {t["parent"] for t in tf} == {"odom_a"}
    for i, t in enumerate(tf):
        _check_pose({"position": t["translation"], "orientation": t["rotation"]}, i)

    assert [p["stamp"] for p in rec["path"]] == stamps
    last = rec["path"][-1]
    assert last["frame_id"] == "odom_a" and last["stamps"] == stamps
    np.testing.assert_allclose(last["positions"], [pose_fields(pose_for(i))[0] for i in range(n)], atol=1e-12)

    assert [c["stamp"] for c in rec["points"]] == stamps
    for i, c in enumerate(rec["points"]):
        assert c["frame_id"] == "odom_a"
        assert [tuple(f) for f in c["fields"]] == list(CLOUD_FIELDS)
        assert (c["height"], c["width"], c["point_step"], c["row_step"]) == (1, GRID_H * GRID_W - 1, 16, 16 * 23)
        assert c["is_dense"]
        xyz = np.asarray(c["xyz"])
        assert np.isfinite(xyz).all()
        T = pose_for(i)  # the fake backend's plane lies at depth 2 in its camera
        np.testing.assert_allclose(((xyz - T[:3, 3]) @ T[:3, :3])[:, 2], 2.0, atol=1e-5)
        assert {tuple(rgb) for rgb in c["rgb"]} == {colour(i)}
    # /diagnostics: the node's counters and its capture-to-publish latency (the stamps are from 2017, so the
    # latency is the years since then: what matters is that it is measured from the image's own stamp).
    status = [d for d in rec["diagnostics"] if d["name"] == "recon: ros_fake"]
    assert status, rec["diagnostics"]
    values = status[0]["values"]
    assert int(values["results_out"]) >= 1 and int(values["latency_samples"]) >= 1
    years_ms = (time.time_ns() - stamps[0]) / 1e6
    assert float(values["latency_ms_p50"]) == pytest.approx(years_ms, rel=1e-3)
    assert "5 frames in, 5 results out, 0 images dropped, faults {}" in _stop(node, tmp_path / "node.log")


def test_ros_node_undistorts_a_distorted_camera_info(launch: Callable[..., subprocess.Popen],
                                                     tmp_path: Path) -> None:
    """CameraInfo with barrel distortion, through the shared pipeline: the camera node remaps the frames to the
    pinhole camera before they reach the ReconNode (recon.calib.undistort.FrameUndistorter), so the fake backend
    samples its point colours from the undistorted texture, and every stamp comes back."""
    n = 3
    rec, node = _run(launch, tmp_path, "recon_u", [], ["--count", str(n), "--k1", "-0.25", "--pattern", "texture"])
    assert [p["stamp"] for p in rec["pose"]] == [stamp_ns(i) for i in range(n)]
    log = _stop(node, tmp_path / "node.log")
    assert "CameraNode(ros->inproc://" in log and "undistorting frames (distortion [-0.25, 0.0, 0.0, 0.0, 0.0])" in log
    assert "3 frames in, 3 results out" in log
    undistort = Undistorter(CameraInfo(WIDTH, HEIGHT, np.reshape(K, (3, 3)), [-0.25, 0.0, 0.0, 0.0, 0.0]))

    def grid_colours(image: np.ndarray) -> list[list[int]]:  # where the fake backend samples, NaN point left out
        return image[:: HEIGHT // GRID_H, :: WIDTH // GRID_W][:GRID_H, :GRID_W].reshape(-1, 3)[1:].tolist()

    for i, c in enumerate(rec["points"]):
        captured = make_rgb(i, "texture", WIDTH, HEIGHT)
        assert c["rgb"] == grid_colours(undistort.image(captured))  # raw frames on the wire: exact
        assert c["rgb"] != grid_colours(captured)  # and not what the camera captured


def test_ros_node_streams_to_an_external_recon_node(launch: Callable[..., subprocess.Popen],
                                                    roscore: dict[str, str], tmp_path: Path) -> None:
    """`--node`: the reconstruction runs in a separate `recon node recon` process over tcp://; the ROS node only
    subscribes and publishes (the identity backend: x = seq cm, points at depth 1 coloured by the image)."""
    bind, publish, control = (f"tcp://127.0.0.1:{_free_port()}" for _ in range(3))
    launch("recon", [sys.executable, "-m", "recon.nodes.recon_cli", "--bind", bind, "--publish", publish,
                     "--control", control, "--backend", "identity", "-o", "points=true", "--no-state",
                     "--heartbeat", "0.2"])
    _set_params(roscore, {"/recon_r/node_publish": publish, "/recon_r/node_control": control})
    n = 4
    rec, node = _run(launch, tmp_path, "recon_r", ["--backend", "identity", "--node", bind, "--camera-frame", "cam_r"],
                     ["--count", str(n)], timeout=60)
    log = _stop(node, tmp_path / "node.log")
    assert "identity (tcp://127.0.0.1:" in log and f"{n} frames in, {n} results out, 0 images dropped" in log
    assert [p["stamp"] for p in rec["pose"]] == [stamp_ns(i) for i in range(n)]
    np.testing.assert_allclose([p["position"] for p in rec["pose"]], [[0.01 * i, 0, 0] for i in range(n)],
                               atol=1e-12)
    assert [t["child"] for t in rec["tf"]] == ["cam_r"] * n
    assert [c["width"] for c in rec["points"]] == [WIDTH * HEIGHT] * n
    assert [{tuple(rgb) for rgb in c["rgb"]} for c in rec["points"]] == [{colour(i)} for i in range(n)]


def test_ros_node_params_lagging_backend_bgr8(launch: Callable[..., subprocess.Popen], roscore: dict[str, str],
                                              tmp_path: Path) -> None:
    """A backend emitting one frame late: stamps follow the result, not the newest image; the result still
    pending at SIGTERM is flushed and published before the node exits. Options from ~backend_options (dict)."""
    n = 5
    _set_params(roscore, {"/recon_b/backend_options": {"lag": 1}})
    rec, node = _run(launch, tmp_path, "recon_b", ["--backend", "ros_fake", "_camera_frame:=cam_b"],
                     ["--count", str(n), "--encoding", "bgr8"], stop_at=n - 1)
    assert "5 frames in, 5 results out" in _stop(node, tmp_path / "node.log", signalled=True)
    stamps = [stamp_ns(i) for i in range(n)]
    assert [p["stamp"] for p in rec["pose"]] == stamps
    for i, p in enumerate(rec["pose"]):
        _check_pose(p, i)
    assert [t["stamp"] for t in rec["tf"] if t["child"] == "cam_b"] == stamps
    assert {t["parent"] for t in rec["tf"]} == {"map"}
    assert [{tuple(rgb) for rgb in c["rgb"]} for c in rec["points"]] == [{colour(i)} for i in range(n)]


def test_ros_node_compressed_png(launch: Callable[..., subprocess.Popen], tmp_path: Path) -> None:
    """CompressedImage (png, lossless) decoded without cv_bridge: colours and stamps survive."""
    n = 3
    rec, _ = _run(launch, tmp_path, "recon_c", ["--backend", "ros_fake", "--compressed", "--map-frame", "world_c"],
               ["--count", str(n), "--compressed", "png"])
    assert [p["stamp"] for p in rec["pose"]] == [stamp_ns(i) for i in range(n)]
    assert {p["frame_id"] for p in rec["pose"]} == {"world_c"}
    assert [{tuple(rgb) for rgb in c["rgb"]} for c in rec["points"]] == [{colour(i)} for i in range(n)]


def test_ros_node_geometric_rgbd_smoke(launch: Callable[..., subprocess.Popen], tmp_path: Path) -> None:
    """The real weight-free backend behind the ROS node, fed colour + registered 16UC1 depth: every image gets
    a finite pose with its own stamp, and metric points lie on the 1.5 m plane the depth describes."""
    n = 6
    rec, node = _run(launch, tmp_path, "recon_g", ["--backend", "geometric", "--depth-topic", "/cam/depth"],
                     ["--count", str(n), "--pattern", "texture", "--size", "160x120", "--depth-mm", "1500"],
                     timeout=50)
    assert "faults {}" in _stop(node, tmp_path / "node.log")
    assert [p["stamp"] for p in rec["pose"]] == [stamp_ns(i) for i in range(n)]
    assert all(np.isfinite(p["position"]).all() for p in rec["pose"])
    assert len(rec["points"]) == n and all(c["width"] > 0 for c in rec["points"])
    first = np.asarray(rec["points"][0]["xyz"])  # frame 0 defines the world: its camera is the origin
    np.testing.assert_allclose(first[:, 2], 1.5, atol=1e-3)
