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


def scannet_copy(src: Path, dst: Path) -> int:
    """The TUM sequence in ScanNet's exported layout: colour JPEGs at twice the depth's size (another sensor),
    16-bit millimetre depth, camera-to-world poses (one -inf, as ScanNet writes a failed pose), 4x4 intrinsics.
    Returns the frame whose pose is -inf."""
    from PIL import Image

    from recon.datasets import open_sequence

    for name in ("color", "depth", "pose", "intrinsic"):
        (dst / name).mkdir(parents=True)
    seq = open_sequence(src)
    K4 = np.eye(4)
    K4[:3, :3] = seq.camera_info.K
    np.savetxt(dst / "intrinsic" / "intrinsic_depth.txt", K4)
    K4[:2, :3] *= 2
    np.savetxt(dst / "intrinsic" / "intrinsic_color.txt", K4)
    failed = 5
    for i, frame in enumerate(seq):
        h, w = frame.depth.shape
        Image.fromarray(frame.image).resize((2 * w, 2 * h), Image.BICUBIC).save(dst / "color" / f"{i}.jpg", quality=95)
        Image.fromarray(np.round(frame.depth * 1000).astype(np.uint16)).save(dst / "depth" / f"{i}.png")
        pose = np.full((4, 4), -np.inf) if i == failed else frame.meta["T_world_cam_gt"]
        np.savetxt(dst / "pose" / f"{i}.txt", pose)
    return failed


def test_replay_of_a_scannet_scene_matches_its_tum_twin(sequence: Path, tmp_path: Path) -> None:
    """The same frames as ScanNet exports them replay as RGB-D with ground truth: colour resized onto the depth grid
    with the depth intrinsics, depth in millimetres, the -inf pose a gap in the ground truth. The trajectory must
    match the TUM run's: a wrong K (the colour camera's), depth unit or pose convention moves it by far more."""
    from recon.datasets import detect_layout, open_sequence

    scene = tmp_path / "scene0000_00"
    failed = scannet_copy(sequence, scene)
    assert detect_layout(scene) == "scannet"
    seq = open_sequence(scene)
    tum = open_sequence(sequence)
    np.testing.assert_allclose(seq.camera_info.K, tum.camera_info.K)
    assert len(seq.ground_truth) == 11 and seq.has_depth
    frame, twin = next(iter(seq)), next(iter(tum))
    assert frame.image.shape == twin.image.shape and frame.depth.shape == twin.depth.shape
    np.testing.assert_allclose(frame.depth, twin.depth, atol=5e-4)  # millimetre rounding
    assert "T_world_cam_gt" not in list(seq)[failed].meta

    runs = {}
    for name, path in (("tum", sequence), ("scannet", scene)):
        out = tmp_path / name
        assert main(["replay", str(path), "--out", str(out), "--viewer", "none", "--no-progress"]) == 0
        runs[name] = (read_tum_trajectory(out / "trajectory.tum")[1], json.loads((out / "metrics.json").read_text()))
    assert runs["scannet"][1]["num_matched"] == 11 and runs["tum"][1]["num_matched"] == 12
    (T_tum, m_tum), (T_scannet, m_scannet) = runs["tum"], runs["scannet"]
    path_length = np.linalg.norm(np.diff(T_tum[:, :3, 3], axis=0), axis=1).sum()
    assert np.linalg.norm(T_scannet[:, :3, 3] - T_tum[:, :3, 3], axis=1).max() < 0.05 * path_length
    assert m_scannet["ate_rmse"] < m_tum["ate_rmse"] + 0.02 * path_length


@pytest.fixture(scope="module")
def uncalibrated_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rendered walk as a bare image folder: no calibration file, no EXIF, no depth."""
    root = tmp_path_factory.mktemp("mono")
    seq = synthetic.generate_sequence(root / "render", seed=0, trajectory="walk", num_frames=40, width=160,
                                      height=120, supersample=1)
    folder = root / "images"
    folder.mkdir()
    for src in sorted((seq / "rgb").iterdir()):
        shutil.copy(src, folder / src.name)
    return folder


def test_monocular_replay_without_intrinsics_calibrates_in_a_first_pass(uncalibrated_folder: Path,
                                                                        tmp_path: Path) -> None:
    """The first pass's focal length is what the reconstruction is given (summary.json says so); with
    --calibration-pass off, or intrinsics known, there is no first pass."""
    from recon.commands.calibration_pass import SOURCE

    runs = {}
    for mode in ("auto", "off"):
        out = tmp_path / mode
        assert main(["replay", str(uncalibrated_folder), "--out", str(out), "--viewer", "none", "--no-progress",
                     "--calibration-pass", mode]) == 0
        runs[mode] = json.loads((out / "summary.json").read_text())
        assert len(read_tum_trajectory(out / "trajectory.tum")[0]) == 40
    first = runs["auto"]["extra"]["calibration_pass"]
    assert first["frames"] == 40 and first["found"]["source"].startswith("self-calibrated")
    used = runs["auto"]["extra"]["intrinsics"]
    assert used["source"] == SOURCE and used["fx"] == pytest.approx(first["found"]["fx"])
    # The one-pass run ends where the first pass ended: the same backend over the same frames.
    assert runs["off"]["extra"]["intrinsics"]["fx"] == pytest.approx(first["found"]["fx"], rel=1e-6)
    assert "calibration_pass" not in runs["off"]["extra"]
    assert runs["off"]["extra"]["intrinsics"]["source"].startswith("self-calibrated")
    (uncalibrated_folder / "cameras.txt").write_text("1 PINHOLE 160 120 140 140 80 60\n")
    try:
        out = tmp_path / "known"
        assert main(["replay", str(uncalibrated_folder), "--out", str(out), "--viewer", "none", "--no-progress"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert "calibration_pass" not in summary["extra"] and summary["extra"]["intrinsics"]["fx"] == 140
    finally:
        (uncalibrated_folder / "cameras.txt").unlink()
