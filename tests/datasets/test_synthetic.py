"""Synthetic scenes: determinism, geometric consistency of depth / poses / K, motion sizes, the TUM round trip,
the `recon synth` command and the bundled sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recon.datasets import open_sequence
from recon.datasets.synthetic import (
    TRAJECTORIES,
    Renderer,
    build_scene,
    default_intrinsics,
    generate_sequence,
    make_trajectory,
)
from recon.datasets.tum import TumSequence
from recon.errors import ConfigError
from recon.geometry import inv_se3, rotation_angle
from recon.io.trajectory import read_tum_trajectory

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "datasets" / "sample"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-frame orbit at 64x48 (fast to render) shared by the tests below."""
    return generate_sequence(tmp_path_factory.mktemp("syn") / "orbit", seed=3, trajectory="orbit", num_frames=4,
                             width=64, height=48)


def test_same_seed_same_bytes_other_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = generate_sequence(tmp_path / "again", seed=3, trajectory="orbit", num_frames=4, width=64, height=48)
    a, b = _files(tiny), _files(again)
    assert sorted(a) == sorted(b) and len(a) == 4 * 2 + 4
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    other = _files(generate_sequence(tmp_path / "other", seed=4, trajectory="orbit", num_frames=4, width=64,
                                     height=48))
    assert sorted(other) == sorted(a)  # same layout and timestamps ...
    assert other["groundtruth.txt"] != a["groundtruth.txt"]  # ... other room and path
    assert sum(other[k] != a[k] for k in a if k.startswith("rgb/")) == 4


def test_tum_reader_reads_the_output_with_exact_ground_truth(tiny: Path) -> None:
    seq = open_sequence(tiny)
    assert isinstance(seq, TumSequence) and seq.has_depth and len(seq) == 4
    cam = json.loads((tiny / "camera.json").read_text())
    assert cam["depth_scale"] == 5000.0 and (cam["width"], cam["height"]) == (64, 48)
    np.testing.assert_allclose(seq.camera_info.K, default_intrinsics(64, 48))
    scene = build_scene(3)
    poses = make_trajectory("orbit", scene.size, 4, 30.0, 3)
    frames = list(seq)
    assert [f.t_ns for f in frames] == [1_000_000_000 + round(i * 1e6 / 30) * 1000 for i in range(4)]
    for i, f in enumerate(frames):
        assert f.image.shape == (48, 64, 3) and f.depth.shape == (48, 64)
        np.testing.assert_allclose(f.meta["T_world_cam_gt"], poses[i], atol=1e-8)
        valid = f.depth > 0
        assert valid.mean() > 0.99  # a closed room: every ray hits something
        assert f.depth[valid].min() > 0.3 and f.depth.max() < 10.0
        assert f.image.std() > 20  # textured, not flat


def test_depth_pose_and_intrinsics_agree_across_frames(tmp_path: Path) -> None:
    """Back-project pixels of frame i with its depth and pose, re-project into frame j: depth of j must match.

    This fails if depth were the ray length instead of z, if K were off by the half-pixel convention, if poses
    were world-to-camera, or if the axes were not OpenCV.
    """
    root = generate_sequence(tmp_path / "walk", seed=1, trajectory="walk", num_frames=12, width=96, height=72,
                             supersample=1)
    frames = list(open_sequence(root))
    K = frames[0].K
    i, j = 0, 11
    fi, fj = frames[i], frames[j]
    Ti, Tj = fi.meta["T_world_cam_gt"], fj.meta["T_world_cam_gt"]
    assert np.linalg.norm(Ti[:3, 3] - Tj[:3, 3]) > 0.1  # a real baseline

    v, u = np.mgrid[0:72:3, 0:96:3]
    z = fi.depth[v, u].astype(np.float64)
    pts_i = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=-1).reshape(-1, 3)
    T_j_i = inv_se3(Tj) @ Ti
    pts_j = pts_i @ T_j_i[:3, :3].T + T_j_i[:3, 3]
    uj = K[0, 0] * pts_j[:, 0] / pts_j[:, 2] + K[0, 2]
    vj = K[1, 1] * pts_j[:, 1] / pts_j[:, 2] + K[1, 2]
    ui, vi = np.round(uj).astype(int), np.round(vj).astype(int)
    inside = (pts_j[:, 2] > 0) & (ui >= 0) & (ui < 96) & (vi >= 0) & (vi < 72)
    assert inside.mean() > 0.5
    d_obs = fj.depth[vi[inside], ui[inside]]
    d_pred = pts_j[inside, 2]
    rel = np.abs(d_obs - d_pred) / d_pred
    # Occlusion boundaries and rounding to the nearest pixel leave a few outliers; most points agree closely.
    assert np.median(rel) < 0.005
    assert (rel < 0.02).mean() > 0.9

    # The same check with the pose inverted (world-to-camera read as camera-to-world) must fail clearly.
    T_bad = Tj @ inv_se3(Ti)
    pts_bad = pts_i @ T_bad[:3, :3].T + T_bad[:3, 3]
    ok = pts_bad[:, 2] > 0
    ub = np.round(K[0, 0] * pts_bad[ok, 0] / pts_bad[ok, 2] + K[0, 2]).astype(int)
    vb = np.round(K[1, 1] * pts_bad[ok, 1] / pts_bad[ok, 2] + K[1, 2]).astype(int)
    keep = (ub >= 0) & (ub < 96) & (vb >= 0) & (vb < 72)
    rel_bad = np.abs(fj.depth[vb[keep], ub[keep]] - pts_bad[ok][keep, 2]) / pts_bad[ok][keep, 2]
    assert np.median(rel_bad) > 5 * np.median(rel)


@pytest.mark.parametrize("trajectory", TRAJECTORIES)
def test_trajectories_move_moderately_inside_the_room(trajectory: str) -> None:
    for seed in (0, 5):
        scene = build_scene(seed)
        poses = make_trajectory(trajectory, scene.size, 240, 30.0, seed)
        rel = np.einsum("nij,njk->nik", inv_se3(poses[:-1]), poses[1:])
        step = np.linalg.norm(rel[:, :3, 3], axis=1)
        turn = np.degrees(rotation_angle(rel[:, :3, :3]))
        assert step.min() > 0.005 and step.max() < 0.04, (trajectory, step.min(), step.max())
        assert turn.max() < 1.5, (trajectory, turn.max())
        W, D, H = scene.size
        xyz = poses[:, :3, 3]
        assert np.all(np.abs(xyz[:, 0]) < W / 2 - 0.8) and np.all(np.abs(xyz[:, 1]) < D / 2 - 0.8)
        assert np.all((xyz[:, 2] > 1.0) & (xyz[:, 2] < H - 0.5))
        R = poses[:, :3, :3]
        np.testing.assert_allclose(np.einsum("nji,njk->nik", R, R), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
        assert np.all(np.linalg.det(R) > 0)
        # Camera y axis (down) points roughly down in the world (z up): no upside-down frames.
        assert np.all(R[:, 2, 1] < -0.8)


def test_cameras_keep_half_a_metre_from_surfaces() -> None:
    """Depth stays in a range RGB-D sensors and trackers handle (no camera inside or against furniture)."""
    scene = build_scene(2)
    K = default_intrinsics(40, 30)
    renderer = Renderer(scene, K, 40, 30, supersample=1)
    for trajectory in TRAJECTORIES:
        poses = make_trajectory(trajectory, scene.size, 300, 30.0, 2)
        for T in poses[::25]:
            _, depth = renderer.render(T)
            assert depth.min() > 0.5 and depth.max() < 9.0, (trajectory, depth.min(), depth.max())


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trajectory"):
        generate_sequence(tmp_path / "x", trajectory="spiral", num_frames=1, width=16, height=16)
    with pytest.raises(ConfigError, match="num_frames"):
        generate_sequence(tmp_path / "x", num_frames=0)


def test_synth_command_writes_a_readable_sequence(tmp_path: Path) -> None:
    from recon.cli import main
    from recon.commands import synth

    assert synth.TRAJECTORIES == TRAJECTORIES
    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--seed", "2", "--trajectory", "forward", "--frames", "3", "--width", "40",
               "--height", "30", "--rgb-format", "jpg"])
    assert rc == 0
    seq = open_sequence(out)
    assert len(seq) == 3 and seq.camera_info.width == 40
    assert sorted(p.suffix for p in (out / "rgb").iterdir()) == [".jpg"] * 3
    t, T = read_tum_trajectory(out / "groundtruth.txt")
    np.testing.assert_allclose(T, make_trajectory("forward", build_scene(2).size, 3, 30.0, 2), atol=1e-8)


def test_bundled_sample_opens_and_matches_its_recipe() -> None:
    """The committed sample is what `generate_sequence` makes from the recipe in its camera.json."""
    seq = open_sequence(SAMPLE)
    recipe = json.loads((SAMPLE / "camera.json").read_text())["generator"]
    assert seq.name == "sample" and seq.has_depth and len(seq) == recipe["num_frames"] >= 60
    assert seq.ground_truth is not None and len(seq.ground_truth) == len(seq)
    poses = make_trajectory(recipe["trajectory"], build_scene(recipe["seed"]).size, recipe["num_frames"],
                            recipe["fps"], recipe["seed"])
    np.testing.assert_allclose(seq.ground_truth.T_world_cam, poses, atol=1e-8)
    first = next(iter(seq))
    assert first.image.shape == (240, 320, 3) and first.depth is not None and first.depth[first.depth > 0].min() > 0.5
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size < 3.5e6, size


def test_walk_and_orbit_do_not_depend_on_the_frame_count() -> None:
    """Longer renders of a recipe start with the frames of shorter ones (the bundled sample relies on it)."""
    size = build_scene(0).size
    for trajectory in ("walk", "orbit"):
        np.testing.assert_array_equal(make_trajectory(trajectory, size, 40, 30.0, 0)[:25],
                                      make_trajectory(trajectory, size, 25, 30.0, 0))
