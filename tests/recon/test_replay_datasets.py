"""`recon replay` on real files: a tiny synthetic TUM RGB-D sequence read by recon.datasets, the weight-free
backend, every output; then the same sequence with a truncated PNG and a missing depth file (issue 2's
"done when": clear messages naming the files, the chosen --on-error behaviour, exit code 1 when it stops)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main
from recon.datasets import synthetic
from recon.io.trajectory import read_tum_trajectory


@pytest.fixture(scope="module")
def sequence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seq") / "room"
    return synthetic.generate_sequence(out, seed=3, num_frames=12, width=96, height=72, supersample=1)


def broken_copy(src: Path, dst: Path) -> tuple[str, str]:
    """Copy with the 5th image truncated and the 9th depth map deleted; returns both file names."""
    shutil.copytree(src, dst)
    rgb = sorted((dst / "rgb").iterdir())[4]
    rgb.write_bytes(rgb.read_bytes()[:200])
    depth = sorted((dst / "depth").iterdir())[8]
    depth.unlink()
    return rgb.name, depth.name


def test_replay_synthetic_rgbd_writes_everything(sequence: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["replay", str(sequence), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "geometric" and "weight-free" in summary["backend_reason"]
    assert summary["frames_in"] == 12 and summary["frames_skipped"] == 0
    t_ns, T = read_tum_trajectory(out / "trajectory.tum")
    gt_t, _ = read_tum_trajectory(sequence / "groundtruth.txt")
    assert len(t_ns) == 12 and np.isfinite(T).all()
    assert np.abs(t_ns - gt_t[:12]).max() < 10_000_000  # the reader's timestamps are the ground truth's clock

    import open3d as o3d

    cloud = o3d.io.read_point_cloud(str(out / "points.ply"))
    assert len(cloud.points) > 100 and cloud.has_colors()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_matched"] == 12 and metrics["ate_rmse"] is not None
    assert (out / "recording.rrd").stat().st_size > 0


def test_replay_stops_at_the_truncated_png_and_names_it(sequence: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    rgb_name, _ = broken_copy(sequence, tmp_path / "broken")
    out = tmp_path / "run"
    assert main(["replay", str(tmp_path / "broken"), "--out", str(out), "--viewer", "none", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert rgb_name in err and "--on-error skip" in err
    summary = json.loads((out / "summary.json").read_text())
    assert rgb_name in summary["stopped_on_error"] and summary["frames_in"] == 4
    assert len(read_tum_trajectory(out / "trajectory.tum")[0]) == 4


def test_replay_skips_both_bad_frames_and_counts_them(sequence: Path, tmp_path: Path) -> None:
    rgb_name, depth_name = broken_copy(sequence, tmp_path / "broken")
    out = tmp_path / "run"
    assert main(["replay", str(tmp_path / "broken"), "--out", str(out), "--viewer", "none", "--on-error", "skip",
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_skipped"] == 2 and summary["frames_in"] == 10
    assert [Path(p).name for p in summary["skipped_paths"]] == [rgb_name, depth_name]
    assert json.loads((out / "metrics.json").read_text())["num_matched"] == 10


def test_missing_sequence_fails_with_a_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nope"
    assert main(["replay", str(missing), "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    assert str(missing) in caplog.text
