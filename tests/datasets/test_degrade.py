"""Sensor degradations of the synthetic footage: each is measurably there, follows its stated model, and is
deterministic; the loop trajectory returns to its start; fast motion scales the steps; the CLI preset.

Tolerances: noise standard deviations are estimated from >= 10^4 pixels, but half the depth noise variance is a
field correlated over ~9 px, so a 320x240 image holds only ~900 independent cells of it: the std estimate
is good to about 1 / sqrt(2 * 900) = 2.4 % for that half; 10 % leaves four such deviations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from recon.datasets import open_sequence
from recon.datasets.degrade import (
    KINECT_BASELINE_M,
    KINECT_FOCAL_PX,
    KINECT_SUBPIXEL,
    Degradations,
    colour_gains,
    degrade_colour,
    degrade_depth,
    kinect_sigma,
    motion_blur,
)
from recon.datasets.synthetic import (
    LOOP_SECONDS,
    Renderer,
    build_scene,
    default_intrinsics,
    generate_sequence,
    make_trajectory,
    trajectory_at,
)
from recon.errors import ConfigError
from recon.geometry import inv_se3, rotation_angle

H, W = 240, 320


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_degraded_sequences_are_deterministic(tmp_path: Path) -> None:
    d = Degradations.realistic(speed=3.0)
    kw = dict(trajectory="walk", num_frames=3, width=64, height=48, supersample=1, degradations=d)
    a = _files(generate_sequence(tmp_path / "a", seed=5, **kw))
    b = _files(generate_sequence(tmp_path / "b", seed=5, **kw))
    assert a == b
    c = _files(generate_sequence(tmp_path / "c", seed=6, **kw))
    assert all(c[k] != a[k] for k in a if k.startswith(("rgb/", "depth/")))
    clean = _files(generate_sequence(tmp_path / "clean", seed=5, **{**kw, "degradations": None}))
    assert all(clean[k] != a[k] for k in a if k.startswith(("rgb/", "depth/")))
    assert json.loads(a["camera.json"])["generator"]["degradations"] == d.to_dict()
    # Ground truth stays exact under the degradations (the fast trajectory, not a noisy one).
    assert a["groundtruth.txt"] != clean["groundtruth.txt"]  # speed 3 moves further ...
    fast = _files(generate_sequence(tmp_path / "fast", seed=5, **{**kw, "degradations": Degradations(speed=3.0)}))
    assert fast["groundtruth.txt"] == a["groundtruth.txt"]  # ... and only the speed changes the poses


def test_depth_noise_grows_with_z_squared_as_the_kinect_model() -> None:
    d = Degradations(depth_noise=1.0)
    head_on = np.ones((H, W), np.float32)
    measured = {}
    for z in (1.0, 2.0, 3.0):
        clean = np.full((H, W), z, np.float32)
        noisy = degrade_depth(clean, head_on, d, seed=0, index=int(z))
        measured[z] = float(np.std(noisy - clean))
        expected = float(kinect_sigma(np.array(z), np.array(0.0)))
        assert measured[z] == pytest.approx(expected, rel=0.10), (z, measured[z], expected)
    assert measured[1.0] < measured[2.0] < measured[3.0]
    assert measured[3.0] / measured[1.0] > 5.0  # the z^2 growth, not a constant noise
    # Grazing incidence (75 degrees) is noisier than head-on at the same depth.
    clean = np.full((H, W), 2.0, np.float32)
    grazing = degrade_depth(clean, np.full((H, W), math.cos(math.radians(75)), np.float32), d, seed=0, index=9)
    expected = float(kinect_sigma(np.array(2.0), np.array(math.radians(75))))
    assert float(np.std(grazing - clean)) == pytest.approx(expected, rel=0.10)
    assert expected > 1.25 * measured[2.0]


def test_depth_is_quantised_to_kinect_disparity_steps() -> None:
    clean = np.linspace(0.8, 4.0, H * W, dtype=np.float32).reshape(H, W)
    q = degrade_depth(clean, np.ones_like(clean), Degradations(depth_quantise=True), seed=0, index=0)
    disp = KINECT_BASELINE_M * KINECT_FOCAL_PX / q * KINECT_SUBPIXEL
    np.testing.assert_allclose(disp, np.round(disp), atol=1e-3)
    # Rounding moves depth by at most half a step, z^2 / (8 b f) / 2 (first order; 5 % for the curvature).
    step = clean.astype(float) ** 2 / (KINECT_BASELINE_M * KINECT_FOCAL_PX * KINECT_SUBPIXEL)
    assert np.all(np.abs(q - clean) <= 0.5 * step * 1.05)
    assert np.abs(q - clean).max() > 0.4 * 0.5 * (4.0**2 / (KINECT_BASELINE_M * KINECT_FOCAL_PX * KINECT_SUBPIXEL))


def test_depth_holes_follow_range_incidence_and_edges() -> None:
    d = Degradations(depth_holes=True)
    depth = np.full((H, W), 2.0, np.float32)
    depth[:, W // 2:] = 1.0  # a step edge in the middle
    depth[: H // 4] = 7.0  # far beyond the range
    cos = np.ones((H, W), np.float32)
    cos[-H // 4:] = 0.1  # grazing floor
    out = degrade_depth(depth, cos, d, seed=1, index=0)
    assert np.all(out[: H // 4 - 2] == 0)
    assert np.all(out[-H // 4 + 2:] == 0)
    mid = out[H // 4 + 4: -H // 4 - 4]
    edge = mid[:, W // 2 - 1: W // 2 + 1]
    assert (edge == 0).mean() > 0.6
    inside = np.concatenate([mid[:, : W // 2 - 4], mid[:, W // 2 + 4:]], axis=1)
    assert 0.95 < (inside > 0).mean() < 0.999  # a few blobs, most of it kept
    np.testing.assert_array_equal(out[out > 0], depth[out > 0])  # holes only: kept values untouched


@pytest.fixture(scope="module")
def rendered() -> tuple[Renderer, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    scene = build_scene(0)
    K = default_intrinsics(160, 120)
    renderer = Renderer(scene, K, 160, 120, supersample=1)
    poses = make_trajectory("walk", scene.size, 2, 30.0, 0)
    rgb, depth = renderer.render(poses[1])
    return renderer, K, poses[1], rgb, depth


def _laplacian_var(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_motion_blur_follows_the_motion_over_the_exposure(rendered) -> None:
    renderer, K, T, rgb, depth = rendered
    size = renderer.scene.size
    still = motion_blur(rgb, depth, K, T, np.stack([T] * 5))
    assert np.abs(still.astype(int) - rgb).max() <= 1  # no motion, no blur (only the gamma round trip)
    sharp = _laplacian_var(rgb)
    blur = {}
    for speed in (1.0, 4.0):
        times = speed * (1 / 30 + np.linspace(-0.25, 0.25, 9) / 30)
        blur[speed] = _laplacian_var(motion_blur(rgb, depth, K, T, trajectory_at("walk", size, times, 0, 10.0)))
    assert blur[4.0] < blur[1.0] < 0.95 * sharp
    assert blur[4.0] < 0.6 * sharp


def test_exposure_and_white_balance_drift_smoothly() -> None:
    d = Degradations(exposure=0.15, white_balance=0.05)
    t = np.arange(300) / 30.0
    g = np.stack([colour_gains(d, 3, ti) for ti in t])
    log_mean = np.log(g).mean(axis=1)
    assert 0.08 < log_mean.std() < 0.25  # the exposure's stated spread, give or take the sinusoids' luck
    hue = np.log(g[:, 0] / g[:, 2])
    assert hue.std() > 0.02  # white balance changes colour ratios, not only brightness
    assert np.abs(np.diff(log_mean)).max() < 0.05  # smooth: no frame-to-frame flicker
    np.testing.assert_array_equal(colour_gains(Degradations(), 3, 1.0), np.ones(3))


def test_sensor_noise_matches_its_model(rendered) -> None:
    rgb = np.full((H, W, 3), 128, np.uint8)
    out = degrade_colour(rgb, Degradations(sensor_noise=2.0), seed=0, index=0, t=0.0)
    expected = 2.0 * math.sqrt(1 + 128 / 64)
    assert float(np.std(out.astype(float) - 128)) == pytest.approx(expected, rel=0.10)


def _blockiness(gray: np.ndarray) -> float:
    """Mean horizontal step across 8-px block borders over the mean step inside blocks (1: no blocking)."""
    diff = np.abs(np.diff(gray.astype(float), axis=1))
    border = diff[:, 7::8].mean()
    inside = np.delete(diff, np.s_[7::8], axis=1).mean()
    return float(border / inside)


def test_jpeg_artefacts_show_as_blocking(rendered) -> None:
    _, _, _, rgb, _ = rendered
    smooth = cv2.GaussianBlur(rgb, (0, 0), 1.5)  # textures smooth enough for the blocks to show
    out = degrade_colour(smooth, Degradations(jpeg_quality=30), seed=0, index=0, t=0.0)
    gray = lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)  # noqa: E731
    assert _blockiness(gray(out)) > 1.15 * _blockiness(gray(smooth))
    assert np.abs(out.astype(int) - smooth).mean() > 0.5


def test_loop_returns_to_its_start_at_constant_height() -> None:
    size = build_scene(4).size
    n = round(LOOP_SECONDS * 30) + 1
    poses = make_trajectory("loop", size, n, 30.0, 4)
    np.testing.assert_allclose(poses[-1], poses[0], atol=1e-9)
    np.testing.assert_allclose(poses[:, 2, 3], poses[0, 2, 3], atol=1e-12)
    length = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1).sum()
    assert length > 6.0  # a real lap round the room, not a wiggle on the spot
    # Half way round, the camera is far from the start and looks elsewhere (the place is revisited, not kept).
    half = poses[n // 2]
    assert np.linalg.norm(half[:3, 3] - poses[0, :3, 3]) > 2.0
    # Fast motion: four times the speed closes the lap in a quarter of the frames.
    fast = make_trajectory("loop", size, (n - 1) // 4 + 1, 30.0, 4, speed=4.0)
    np.testing.assert_allclose(fast[-1], fast[0], atol=1e-9)


def test_fast_motion_multiplies_the_steps() -> None:
    size = build_scene(0).size
    for kind in ("walk", "orbit", "loop"):
        slow = make_trajectory(kind, size, 41, 30.0, 0)
        fast = make_trajectory(kind, size, 11, 30.0, 0, speed=4.0)
        np.testing.assert_allclose(fast, slow[::4], atol=1e-9)
        rel = np.einsum("nij,njk->nik", inv_se3(fast[:-1]), fast[1:])
        assert np.linalg.norm(rel[:, :3, 3], axis=1).mean() > 0.06  # several cm per frame
        assert np.degrees(rotation_angle(rel[:, :3, :3])).max() < 12.0


def test_bad_degradations_are_refused(tmp_path: Path) -> None:
    for bad in (dict(depth_noise=-1.0), dict(motion_blur=1.5), dict(jpeg_quality=101), dict(speed=0.0)):
        with pytest.raises(ConfigError):
            Degradations(**bad)


def test_synth_command_realistic_preset(tmp_path: Path) -> None:
    from recon.cli import main

    out = tmp_path / "real"
    rc = main(["synth", str(out), "--frames", "2", "--width", "48", "--height", "36", "--supersample", "1",
               "--realistic", "--speed", "3", "--jpeg-artefacts", "0", "--no-depth-holes"])
    assert rc == 0
    recipe = json.loads((out / "camera.json").read_text())["generator"]["degradations"]
    assert recipe == Degradations.realistic(speed=3.0, jpeg_quality=0, depth_holes=False).to_dict()
    seq = open_sequence(out)
    frames = list(seq)
    assert len(frames) == 2 and frames[0].depth is not None
    # Depth is quantised (the preset's) and noisy: not the clean render's continuous values.
    z = frames[0].depth[frames[0].depth > 0]
    disp = KINECT_BASELINE_M * KINECT_FOCAL_PX / z * KINECT_SUBPIXEL
    # Storage in 0.2 mm units moves z by <= 0.1 mm, i.e. the disparity by <= disp * 0.1 mm / z (first order).
    assert np.all(np.abs(disp - np.round(disp)) <= 1.05 * disp * 0.5 / 5000.0 / z + 1e-4)
    assert np.abs(disp - np.round(disp)).max() < 0.2  # on the grid, far from the 0.5 of an unquantised depth
