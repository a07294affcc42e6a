"""kill -9 of the reconstruction node mid-stream, then a restart with the same --state-dir: the stream continues
in the same world frame. Real processes on loopback: camera (a recorded synthetic RGB-D sequence, paced), node,
viewer recording to disk.

The restored session takes its last checkpoint (every 4 frames); the camera re-sends the frames the old node had
acknowledged after that checkpoint plus the unacknowledged ones, so the restored backend catches up and every
frame reaches the recording exactly once (the viewer drops the re-computed duplicates). Checked: the
"continuous" criterion (no step of the camera centre across the restart larger than 3x the median step) and, for
the learned backend, which draws no random numbers, that the recorded trajectory is the uninterrupted run's
(computed in this process with the node processes' single thread, so float sums run in the same order). The
geometric backend's RANSAC draws from OpenCV's process-wide generator, which a new process starts afresh, so its
continuation is equivalent, not bit-identical.

When the checkpoint cannot be restored (another backend configuration), the node says so, starts a new world
frame and the recording continues in a new segment file: the two world frames never share a file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from recon.io.trajectory import read_tum_trajectory
from recon.nodes.pipeline import run_pipeline
from recon.sinks import TrajectoryWriter
from tests.nodes.node_support import NodeProcess, status, tcp, wait_for, zmq_context

pytestmark = pytest.mark.timeout(180)
FRAMES = 30


@pytest.fixture(scope="module")
def sequence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recon.datasets import synthetic

    return Path(synthetic.generate_sequence(tmp_path_factory.mktemp("seq") / "walk", seed=5, trajectory="walk",
                                            num_frames=FRAMES, width=128, height=96, supersample=1))


def _reference(sequence: Path, backend: str, options: dict) -> tuple[np.ndarray, np.ndarray]:
    """The uninterrupted run, single-threaded like the node processes (NodeProcess sets OMP_NUM_THREADS=1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        writer = TrajectoryWriter(sequence.parent / f"reference-{backend}.tum")
        run_pipeline(str(sequence), backend, [writer], mode="inproc", backend_options=options)
    finally:
        torch.set_num_threads(threads)
    traj = writer.trajectory()
    return traj.t_ns, traj.T_world_cam


def _crash_and_restart(tmp_path: Path, sequence: Path, node_args: list[str], restart_args: list[str] | None = None
                       ) -> tuple[Path, dict, str]:
    """Stream `sequence`; kill -9 the node after a third of it; restart it; returns (record dir, viewer summary,
    the restarted node's log)."""
    ep_in, ep_out, ep_ctl = tcp(), tcp(), tcp()
    state = tmp_path / "state"
    base = ["recon", "--bind", ep_in, "--publish", ep_out, "--control", ep_ctl, "--heartbeat", "0.2",
            "--wait-subscribers", "1", "--state-dir", str(state), "--checkpoint-every", "4", "--no-warmup"]
    out = tmp_path / "out"
    with zmq_context() as ctx, \
            NodeProcess(["viewer", "--connect", ep_out, "--record", str(out), "--no-ply", "--summary",
                         str(tmp_path / "viewer.json")], tmp_path / "viewer.log") as viewer, \
            NodeProcess([*base, *node_args], tmp_path / "recon1.log") as node1:
        with NodeProcess(["camera", "--source", str(sequence), "--connect", ep_in, "--stream-id", "walk",
                          "--encoding", "raw", "--fps", "12", "--resend", "2"], tmp_path / "cam.log") as cam:
            wait_for(lambda: status(ctx, ep_ctl)["frames"] >= FRAMES // 3, 90, "a third of the frames")
            node1.kill9()
            time.sleep(0.3)
            with NodeProcess([*base, *(restart_args or node_args)], tmp_path / "recon2.log") as node2:
                assert cam.wait(120) == 0, cam.log()
                assert node2.terminate() == 0, node2.log()
                log2 = node2.log()
            assert "reconstruction node restarted" in cam.log()
        assert viewer.terminate() == 0, viewer.log()
    return out, json.loads((tmp_path / "viewer.json").read_text()), log2


def _assert_continuous(T: np.ndarray) -> None:
    """Every step from frame 5 on (the restart is after frame 10; a random tiny model's very first step is large)
    is within 3x the median step of the run."""
    steps = np.linalg.norm(np.diff(T[:, :3, 3], axis=0), axis=1)
    late = steps[5:]
    assert np.max(late) <= 3 * np.median(steps), f"largest step {np.max(late):.4g}, median {np.median(steps):.4g}"


@pytest.mark.parametrize(("backend", "options", "exact"), [
    ("geometric", {}, False),
    ("infinitevggt", {"model_config": "tiny", "image_width": 56, "device": "cpu", "budget": 400}, True),
])
def test_a_killed_node_restarts_in_the_same_world_frame(tmp_path: Path, sequence: Path, backend: str,
                                                        options: dict, exact: bool) -> None:
    t_ref, T_ref = _reference(sequence, backend, options)
    opts = [a for k, v in options.items() for a in ("-o", f"{k}={v}")]
    out, summary, log2 = _crash_and_restart(tmp_path, sequence, ["--backend", backend, *opts])
    assert "restored from" in log2, log2
    assert not (out / "trajectory.seg1.tum").exists(), "a restored session stays in its world frame"
    t_ns, T = read_tum_trajectory(out / "trajectory.tum")
    assert t_ns.tolist() == t_ref.tolist(), "every frame exactly once"
    assert summary["results"] == FRAMES and summary["duplicates"] > 0, "re-sent frames were re-computed, dropped"
    assert summary["segments"] == {}
    _assert_continuous(T)
    if exact:
        np.testing.assert_allclose(T, T_ref, rtol=0, atol=1e-6, err_msg="the restored run is the uninterrupted run")


def test_an_unrestorable_checkpoint_starts_a_new_segment(tmp_path: Path, sequence: Path) -> None:
    out, summary, log2 = _crash_and_restart(tmp_path, sequence, ["--backend", "geometric"],
                                            ["--backend", "geometric", "-o", "depth_max=7.5"])
    assert "cannot restore its checkpoint" in log2 and "options" in log2, log2
    assert list((tmp_path / "state").glob("*.rejected-*")), "the refused checkpoint is kept aside, not reused"
    t0, _ = read_tum_trajectory(out / "trajectory.tum")
    t1, T1 = read_tum_trajectory(out / "trajectory.seg1.tum")
    assert len(t0) and len(t1) and set(t0.tolist()).isdisjoint(t1.tolist()), "two world frames, two files"
    assert len(t0) + len(t1) == FRAMES and summary["results"] == FRAMES
    assert summary["segments"] == {"walk": 1} and summary["resets"] >= 1
