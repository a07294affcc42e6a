"""Tests of the weight-free `geometric` backend on tiny ray-cast scenes with ground truth."""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# A tiny self-contained scene (textured room with boxes, ray-cast with open3d) so these tests never depend on
# the dataset generator; the sequences are deterministic from a seed.


def _hash01(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice cell."""
    h = (ix.astype(np.uint64) * np.uint64(73856093)) ^ (iy.astype(np.uint64) * np.uint64(19349663))
    h ^= iz.astype(np.uint64) * np.uint64(83492791) + np.uint64(salt * 2654435761 % (1 << 32))
    h ^= h >> np.uint64(13)
    h *= np.uint64(0x5BD1E995)
    h ^= h >> np.uint64(15)
    return (h & np.uint64(0xFFFF)).astype(np.float64) / 65536.0


def _texture(p: np.ndarray, seed: int) -> np.ndarray:
    """RGB in [0,1] of world points nx3: flat random-coloured cells (sharp corners) plus fine value noise."""
    cells = np.floor((p + 0.1234) / 0.3).astype(np.int64) + 1000
    base = np.stack([_hash01(cells[:, 0], cells[:, 1], cells[:, 2], seed * 3 + c) for c in range(3)], axis=1)
    q = (p + 0.037) / 0.08
    i0 = np.floor(q).astype(np.int64) + 100000
    f = q - np.floor(q)
    f = f * f * (3 - 2 * f)
    noise = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = ((f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
                     * (f[:, 2] if dz else 1 - f[:, 2]))
                noise += w * _hash01(i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz, seed + 17)
    return np.clip(0.15 + 0.6 * base + 0.35 * (noise[:, None] - 0.5), 0.0, 1.0)


def _look_at(c: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world pose (OpenCV axes, world y pointing down) at `c` looking at `target`."""
    z = target - c
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = c
    return T


def make_trajectory(kind: str, n: int, seed: int) -> np.ndarray:
    """Ground-truth camera-to-world poses [n,4,4] of a hand-held walk, an orbit or a forward motion."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n)
    if kind == "walk":
        ph = rng.uniform(0, 2 * np.pi, 6)
        c = np.stack([-0.8 + 1.4 * t + 0.1 * np.sin(3 * t + ph[0]), 0.1 * np.sin(5 * t + ph[1]),
                      -0.5 + 0.3 * np.sin(2 * t + ph[2])], axis=1)
        yaw = 0.35 * np.sin(2.5 * t + ph[3])
        target = np.stack([c[:, 0] + 3 * np.sin(yaw), 0.2 * np.sin(3 * t + ph[4]) + np.zeros(n),
                           c[:, 2] + 3 * np.cos(yaw)], axis=1)
    elif kind == "orbit":
        a = rng.uniform(-0.4, 0.4) + np.pi + 1.1 * t
        c = np.stack([1.6 * np.sin(a), -0.2 + 0.05 * np.sin(4 * t), 1.6 * np.cos(a)], axis=1)
        target = np.tile(np.array([0.0, 0.3, 0.0]), (n, 1))
    elif kind == "forward":
        c = np.stack([0.1 * np.sin(4 * t), 0.05 * np.sin(6 * t), -1.5 + 1.6 * t], axis=1)
        target = c + np.stack([0.2 * np.sin(3 * t), 0.1 * np.cos(2 * t) + 0.1, np.full(n, 3.0)], axis=1)
    else:
        raise ValueError(kind)
    return np.stack([_look_at(c[i], target[i]) for i in range(n)])


def render_sequence(kind: str = "walk", n: int = 40, seed: int = 0, width: int = 160, height: int = 120
                    ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """(rgb list, depth list, K, poses[n,4,4]) of a room 8x3x6 m with a few boxes, ray-cast with open3d."""
    import open3d as o3d

    rng = np.random.default_rng(seed + 1000)
    scene = o3d.t.geometry.RaycastingScene()
    room = o3d.geometry.TriangleMesh.create_box(8.0, 3.0, 7.0).translate((-4.0, -1.5, -3.5))
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(room))
    for _ in range(6):
        size = rng.uniform(0.3, 0.9, 3)
        pos = np.array([rng.uniform(-3, 3), 1.5 - size[1], rng.uniform(1.0, 3.0) * rng.choice([-1, 1])])
        box = o3d.geometry.TriangleMesh.create_box(*size).translate(pos)
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(box))
    centre = o3d.geometry.TriangleMesh.create_box(0.6, 0.8, 0.6).translate((-0.3, 0.7, -0.3))
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(centre))

    f = 0.8 * width
    K = np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    # 2x2 supersampling: colours are box-filtered like a real sensor; depth is taken at the pixel centre.
    offsets = [(0.0, 0.0), (-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)]
    dirs = [np.stack([(u + du - K[0, 2]) / f, (v + dv - K[1, 2]) / f, np.ones_like(u)], -1).reshape(-1, 3)
            for du, dv in offsets]
    poses = make_trajectory(kind, n, seed)
    rgbs, depths = [], []
    for T in poses:
        colour = np.zeros((width * height, 3))
        for k, d_cam in enumerate(dirs):
            d_world = d_cam @ T[:3, :3].T
            rays = np.concatenate([np.broadcast_to(T[:3, 3], d_world.shape), d_world], axis=1).astype(np.float32)
            t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy().astype(np.float64)
            if k == 0:
                depths.append(t_hit.reshape(height, width).astype(np.float32))  # rays have z = 1 in the camera
            else:
                colour += _texture(T[:3, 3] + d_world * t_hit[:, None], seed) / 4
        rgbs.append((colour * 255).astype(np.uint8).reshape(height, width, 3))
    return rgbs, depths, K, poses


# ---------------------------------------------------------------------------------------------------------------------
# Tests

import functools  # noqa: E402

import pytest  # noqa: E402

from recon.backends import create_backend  # noqa: E402
from recon.backends.base import Backend  # noqa: E402
from recon.errors import BackendError, ConfigError  # noqa: E402
from recon.eval.trajectory import absolute_trajectory_error, trajectory_length  # noqa: E402
from recon.types import Frame, FrameResult  # noqa: E402

ACCURACY_CASES = [("walk", 0), ("orbit", 1), ("forward", 2)]


@functools.cache
def _sequence(kind: str, seed: int, n: int = 60, width: int = 320, height: int = 240):
    """Rendered once per test session (rendering costs more than tracking)."""
    return render_sequence(kind, n, seed, width, height)


def _frames(kind: str, seed: int, *, depth: bool, **kwargs) -> tuple[list[Frame], np.ndarray]:
    rgbs, depths, K, poses = _sequence(kind, seed, **kwargs)
    frames = [Frame("cam", i, i * 33_333_333, rgbs[i], K=K, depth=depths[i] if depth else None)
              for i in range(len(rgbs))]
    return frames, np.linalg.inv(poses[0]) @ poses  # world = first camera, like the backend


def _run(backend: Backend, frames: list[Frame]) -> list[FrameResult]:
    out: list[FrameResult] = []
    for f in frames:
        out += backend.step(f)
    out += backend.flush()
    return out


def _poses_by_seq(results: list[FrameResult]) -> dict[int, np.ndarray]:
    poses: dict[int, np.ndarray] = {}
    for r in results:
        poses[r.seq] = r.T_world_cam  # updates (same seq) replace earlier poses
    return poses


def _ate_fraction(results: list[FrameResult], gt: np.ndarray, seqs: list[int], align: str) -> float:
    poses = _poses_by_seq(results)
    est = np.stack([poses[s] for s in seqs])
    ref = gt[seqs]
    return absolute_trajectory_error(est, ref, align).rmse / trajectory_length(ref)


@pytest.mark.parametrize(("kind", "seed"), ACCURACY_CASES)
def test_rgbd_ate_within_one_percent(kind: str, seed: int) -> None:
    frames, gt = _frames(kind, seed, depth=True)
    backend = create_backend("geometric")
    results = _run(backend, frames)
    assert [r.seq for r in results] == list(range(len(frames)))  # one result per frame, in order, at once
    assert all(r.metric for r in results)
    assert np.allclose(results[0].T_world_cam, np.eye(4))
    assert _ate_fraction(results, gt, list(range(len(frames))), "se3") <= 0.01
    # Metric: without any scale alignment the trajectory is as long as the ground truth.
    est = np.stack([r.T_world_cam for r in results])
    assert trajectory_length(est) == pytest.approx(trajectory_length(gt), rel=0.03)
    assert backend.stats().extra["tracking_losses"] == 0


@pytest.mark.parametrize(("kind", "seed"), ACCURACY_CASES)
def test_mono_ate_within_two_percent(kind: str, seed: int) -> None:
    frames, gt = _frames(kind, seed, depth=False)
    backend = create_backend("geometric")  # no depth in the frames: monocular mode
    results = _run(backend, frames)
    assert sorted(_poses_by_seq(results)) == list(range(len(frames)))
    assert not any(r.metric for r in results)
    assert backend.stats().extra["mode"] == "mono"
    assert backend.stats().extra["guessed_poses"] == 0
    assert _ate_fraction(results, gt, list(range(len(frames))), "sim3") <= 0.02


def test_mono_point_maps_are_consistent_with_poses() -> None:
    """Dense monocular depth, up to the session scale, matches the true depth where it is confident."""
    frames, gt = _frames("walk", 0, depth=False)
    _, depths, _, _ = _sequence("walk", 0)
    results = _run(create_backend("geometric", stride=2), frames)
    scale = []
    for r in results[-10:]:
        valid = r.confidence > 0
        assert valid.mean() > 0.3
        true = depths[r.seq][::2, ::2][valid]
        scale.append(np.median(true / r.depth[valid]))
        rel = np.abs(r.depth[valid] * scale[-1] - true) / true
        assert np.median(rel) < 0.05
    assert np.std(scale) / np.mean(scale) < 0.05  # one consistent scale across frames


def test_output_grid_matches_K_and_points() -> None:
    frames, _ = _frames("walk", 0, depth=True)
    backend = create_backend("geometric", max_points=5000)  # 320x240 -> stride 4 -> 80x60
    r = _run(backend, frames[:5])[-1]
    assert r.depth.shape == (60, 80) and r.points_world.shape == (60, 80, 3) and r.image.shape == (60, 80, 3)
    assert r.confidence.shape == (60, 80) and r.points_world.dtype == np.float32
    assert r.K[0, 0] == pytest.approx(frames[0].K[0, 0] / 4)
    assert np.array_equal(r.image, frames[4].image[::4, ::4])
    # Points projected through the pose and K land on their own grid pixels.
    T_cw = np.linalg.inv(r.T_world_cam)
    valid = r.confidence > 0
    P = r.points_world[valid].astype(np.float64) @ T_cw[:3, :3].T + T_cw[:3, 3]
    uv = P[:, :2] / P[:, 2:] * [r.K[0, 0], r.K[1, 1]] + r.K[:2, 2]
    vv, uu = np.nonzero(valid)
    assert np.allclose(uv, np.stack([uu, vv], 1), atol=1e-2)
    assert np.all(np.isnan(r.points_world[~valid]))


def test_unknown_intrinsics_use_documented_default() -> None:
    frames, _ = _frames("walk", 0, depth=False)
    no_k = [Frame(f.stream_id, f.seq, f.t_ns, f.image) for f in frames[:3]]
    results = _run(create_backend("geometric", stride=1), no_k)
    assert results and results[0].K[0, 0] == pytest.approx(0.8 * 320)
    given = np.array([[250.0, 0, 160], [0, 250.0, 120], [0, 0, 1]])
    results = _run(create_backend("geometric", stride=1, K=given), no_k)
    assert np.allclose(results[0].K, given)


def _blank(frame: Frame, with_depth: bool) -> Frame:
    return Frame(frame.stream_id, frame.seq, frame.t_ns, np.zeros_like(frame.image), K=frame.K,
                 depth=np.zeros_like(frame.depth) if with_depth else None)


@pytest.mark.parametrize("depth", [True, False], ids=["rgbd", "mono"])
def test_blank_frame_is_a_counted_loss_and_tracking_resumes(depth: bool, caplog: pytest.LogCaptureFixture) -> None:
    frames, gt = _frames("walk", 0, depth=depth)
    frames[30] = _blank(frames[30], depth)
    backend = create_backend("geometric")
    caplog.set_level("WARNING")
    results = _run(backend, frames)
    extra = backend.stats().extra
    assert extra["tracking_losses"] == 1 and not extra["lost"]
    assert len([r for r in caplog.records if "tracking_lost" in r.getMessage()]) == 1  # reported once
    assert sorted(_poses_by_seq(results)) == list(range(len(frames)))
    after = list(range(31, len(frames)))
    if depth:
        assert _ate_fraction(results, gt, list(range(len(frames))), "se3") <= 0.01
    else:
        assert extra["reinitialisations"] == 0  # one bad frame: tracked again from the last good frame
        assert _ate_fraction(results, gt, after, "sim3") <= 0.02


@pytest.mark.parametrize("depth", [True, False], ids=["rgbd", "mono"])
def test_jump_to_another_place_recovers(depth: bool) -> None:
    """Half-way the camera 'teleports' into another sequence: a loss, then a new map chained to the old one."""
    first, _ = _frames("walk", 0, depth=depth)
    second, gt2 = _frames("orbit", 1, depth=depth)
    frames = first[:30] + [Frame("cam", i, f.t_ns, f.image, K=f.K, depth=f.depth) for i, f in
                           enumerate(second[30:], start=30)]
    backend = create_backend("geometric", rgbd={"max_lost_frames": 3}, mono={"max_lost_frames": 3})
    results = _run(backend, frames)
    extra = backend.stats().extra
    assert extra["tracking_losses"] >= 1 and not extra["lost"]
    assert extra["reanchors" if depth else "reinitialisations"] == 1
    assert sorted(_poses_by_seq(results)) == list(range(len(frames)))
    after = [r.seq for r in results if r.seq >= 36 and r.confidence.any()]
    assert len(after) >= 15
    # Relative motion after the jump is tracked again (metric for RGB-D, up to scale for monocular).
    assert _ate_fraction(results, gt2, after, "se3" if depth else "sim3") <= (0.01 if depth else 0.04)


def test_mono_reinitialises_after_a_long_loss() -> None:
    frames, gt = _frames("walk", 0, depth=False)
    for i in range(25, 31):
        frames[i] = _blank(frames[i], False)
    backend = create_backend("geometric", mono={"max_lost_frames": 3})
    results = _run(backend, frames)
    extra = backend.stats().extra
    assert extra["tracking_losses"] >= 4 and extra["reinitialisations"] == 1
    assert extra["state"] == "track"
    assert sorted(_poses_by_seq(results)) == list(range(len(frames)))
    after = [r.seq for r in results if r.seq > 31 and r.confidence.any()]
    assert len(after) > 15
    # A map started mid-sequence from fewer frames is looser than the full-sequence target (2%).
    assert _ate_fraction(results, gt, after, "sim3") <= 0.04
    # The new map is chained to the old trajectory: its scale is that of the first map within a factor 2.
    poses = _poses_by_seq(results)
    before_len = trajectory_length(np.stack([poses[s] for s in range(0, 25)]))
    after_len = trajectory_length(np.stack([poses[s] for s in after]))
    ratio = (after_len / trajectory_length(gt[after])) / (before_len / trajectory_length(gt[:25]))
    assert 0.5 < ratio < 2.0


def test_reset_starts_a_new_session_and_stats_count() -> None:
    frames, _ = _frames("orbit", 1, depth=True)
    backend = create_backend("geometric")
    assert isinstance(backend, Backend) and backend.name == "geometric"
    _run(backend, frames[:10])
    stats = backend.stats()
    assert stats.frames_in == 10 and stats.results_out == 10 and stats.memory_bytes > 0
    assert stats.timings_ms["step"] > 0 and stats.extra["keyframes"] >= 1
    backend.reset()
    assert backend.stats().frames_in == 0 and backend.stats().extra["mode"] is None
    results = _run(backend, frames[20:23])
    assert np.allclose(results[0].T_world_cam, np.eye(4))  # world = first camera of the new session
    assert not np.allclose(results[2].T_world_cam, np.eye(4))


def test_bad_options_and_resolution_change_raise() -> None:
    with pytest.raises(ConfigError, match="mode"):
        create_backend("geometric", mode="stereo")
    with pytest.raises(ConfigError, match="stride"):
        create_backend("geometric", stride=0)
    frames, _ = _frames("walk", 0, depth=True)
    backend = create_backend("geometric")
    backend.step(frames[0])
    small = Frame("cam", 1, 1, frames[1].image[:120, :160].copy(), K=frames[1].K, depth=frames[1].depth[:120, :160])
    with pytest.raises(BackendError, match="reset"):
        backend.step(small)
