"""`recon replay --distributed` (node processes over tcp) gives the in-process trajectory, frame for frame.

The geometric backend is deterministic and frames travel raw (lossless), so the two runs must agree exactly.
The in-process node pipeline (`run_pipeline(mode="inproc")`) is checked against the same reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recon.io.trajectory import read_tum_trajectory
from tests.nodes.node_support import REPO

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def sequence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recon.datasets import synthetic

    return Path(synthetic.generate_sequence(tmp_path_factory.mktemp("seq") / "walk", seed=3, trajectory="walk",
                                            num_frames=16, width=128, height=96, supersample=1))


def _replay(seq: Path, out: Path, *extra: str) -> tuple[np.ndarray, np.ndarray]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "recon.cli", "replay", str(seq), "--backend", "geometric",
                           "--out", str(out), "--viewer", "none", "--no-progress", *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return read_tum_trajectory(out / "trajectory.tum")


def test_distributed_replay_matches_the_in_process_run(sequence: Path, tmp_path: Path) -> None:
    t_ref, T_ref = _replay(sequence, tmp_path / "inproc")
    t_dist, T_dist = _replay(sequence, tmp_path / "dist", "--distributed")
    assert len(T_ref) == 16
    np.testing.assert_array_equal(t_dist, t_ref)
    np.testing.assert_allclose(T_dist, T_ref, rtol=0, atol=1e-9)
    assert np.linalg.norm(T_ref[-1, :3, 3] - T_ref[0, :3, 3]) > 1e-3, "the camera moved: a real trajectory"


def test_inproc_node_pipeline_matches_the_direct_loop(sequence: Path) -> None:
    from recon.backends import create_backend
    from recon.datasets import open_sequence
    from recon.nodes.pipeline import run_pipeline
    from recon.sinks import TrajectoryWriter

    backend = create_backend("geometric")
    direct = []
    for frame in open_sequence(str(sequence)):
        direct += backend.step(frame)
    direct += backend.flush()
    writer = TrajectoryWriter(sequence.parent / "unused.tum")
    stats = run_pipeline(str(sequence), "geometric", [writer], mode="inproc")
    got = writer.trajectory().T_world_cam
    assert stats.viewer.results == len(direct) == 16
    np.testing.assert_allclose(got, np.stack([r.T_world_cam for r in direct]), rtol=0, atol=1e-9)
