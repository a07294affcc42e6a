"""`recon live` end to end in a subprocess: a recorded source played as a camera, stopped by SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recon.io.trajectory import read_tum_trajectory
from tests.nodes.node_support import REPO, wait_for


@pytest.mark.timeout(90)
def test_recon_live_runs_until_sigint_and_writes_its_outputs(tmp_path: Path) -> None:
    out = tmp_path / "live"
    log = (tmp_path / "live.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "recon.cli", "live", "--camera", "pattern:100000:32x24",
                             "--realtime", "--fps", "100", "--backend", "identity", "--backend-opt", "delay_ms=20",
                             "--out", str(out), "--viewer", "rrd", "--no-ply"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "new session" in (tmp_path / "live.log").read_text(), 60, "the live session to start")
        import time

        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    text = (tmp_path / "live.log").read_text()
    assert rc == 0, text
    t_ns, T = read_tum_trajectory(out / "trajectory.tum")
    assert len(T) >= 20
    seqs = np.round(T[:, 0, 3] / 0.01).astype(int)
    assert np.all(np.diff(seqs) > 0)
    assert np.any(np.diff(seqs) > 1), "a 100 fps camera on a 50 fps model drops frames (latest wins)"
    assert (out / "recording.rrd").stat().st_size > 0
    assert "dropped at the camera" in text
    summary = json.loads((out / "summary.json").read_text())
    stream = summary["streams"]["pattern32x24"]
    assert summary["results_lost"] == 0 and stream["results"] == len(T)
    assert stream["captured"] == stream["sent"] + stream["dropped_at_camera"] and stream["dropped_at_node"] == 0
    assert stream["latency_ms"]["n"] > 0 and stream["latency_ms"]["p99"] < 1000, "live results are fresh"
