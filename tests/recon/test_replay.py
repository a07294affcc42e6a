"""`recon replay` end to end on a tiny in-memory sequence with a fake backend registered here (it returns the
ground-truth poses), plus the sinks it is built from: every output written, the PLY readable by open3d, the
TUM file round-tripping, metrics from recon.eval, and the exit code and summary when a frame is corrupt."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rerun.chunk as rr_chunk

import recon.backends as backends
from recon.backends import BackendEntry
from recon.backends.configs import BackendConfig
from recon.cli import main
from recon.commands import replay
from recon.config import option
from recon.datasets.base import ReadStats
from recon.errors import CorruptFrameError
from recon.geometry.transforms import so3_exp
from recon.io.trajectory import read_tum_trajectory
from recon.nodes.pipeline import run_replay_inproc
from recon.sinks import PointCloudWriter, SinkGroup, TrajectoryWriter, VoxelAccumulator
from recon.types import BackendStats, CameraInfo, Frame, FrameResult, Trajectory

H, W = 24, 32
K = np.array([[28.0, 0, W / 2], [0, 28.0, H / 2], [0, 0, 1]])


def gt_pose(i: int) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = so3_exp(np.array([0.0, 0.05 * i, 0.01 * i]))
    T[:3, 3] = [0.1 * i, 0.02 * i * i, 0.03 * i]
    return T


class TinySequence:
    """An in-memory Sequence: RGB-D frames of a plane, ground truth, an optional corrupt frame."""

    def __init__(self, n: int = 8, corrupt_at: int | None = None, on_error: str = "stop", name: str = "tiny") -> None:
        self.name = name
        self.n = n
        self.corrupt_at = corrupt_at
        self.on_error = on_error
        self.camera_info = CameraInfo(W, H, K)
        self.has_depth = True
        self.stats = ReadStats()
        t = np.array([self.t_ns(i) for i in range(n)], dtype=np.int64)
        self.ground_truth = Trajectory(t, np.stack([gt_pose(i) for i in range(n)]))

    @staticmethod
    def t_ns(i: int) -> int:
        return 1_700_000_000_000_000_000 + i * 50_000_000

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Frame]:
        rng = np.random.default_rng(0)
        for i in range(self.n):
            if i == self.corrupt_at:
                path = f"/data/{self.name}/rgb/{i:04d}.png"
                if self.on_error == "stop":
                    raise CorruptFrameError(f"cannot decode image {path}: truncated PNG")
                self.stats.frames_skipped += 1
                self.stats.skipped_paths.append(path)
                continue
            self.stats.frames_read += 1
            image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            depth = np.full((H, W), 1.5 + 0.1 * i, np.float32)
            yield Frame(self.name, i, self.t_ns(i), image, K, depth, meta={"T_world_cam_gt": gt_pose(i)})


@dataclass
class GroundTruthConfig(BackendConfig):
    kind = "fake_gt backend"

    late: bool = option(True, "emit each frame one step late")


class GroundTruthBackend:
    """Fake backend: the ground-truth pose and the depth back-projected; emits each frame one step late."""

    name = "fake_gt"

    def __init__(self, late: bool = True) -> None:
        self.late = late
        self.pending: list[FrameResult] = []
        self._stats = BackendStats()

    def reset(self) -> None:
        self.pending.clear()

    def _result(self, frame: Frame) -> FrameResult:
        from recon.geometry.camera import depth_to_world_points

        T = frame.meta["T_world_cam_gt"]
        conf = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
        return FrameResult(frame.stream_id, frame.seq, frame.t_ns, T, frame.K, depth=frame.depth, confidence=conf,
                           points_world=depth_to_world_points(frame.depth, frame.K, T), metric=True,
                           image=frame.image)

    def step(self, frame: Frame) -> list[FrameResult]:
        self._stats.frames_in += 1
        self.pending.append(self._result(frame))
        keep = 1 if self.late else 0
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        self._stats.results_out += len(out)
        return out

    def flush(self) -> list[FrameResult]:
        out, self.pending = self.pending, []
        self._stats.results_out += len(out)
        return out

    def stats(self) -> BackendStats:
        return self._stats


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    """Registers `fake_gt` through the real registry (factory in a module made importable for the test)."""
    module = types.ModuleType("recon_test_fake_backend")
    module.create = lambda config: GroundTruthBackend(late=config.late)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(backends._REGISTRY, "fake_gt",
                        BackendEntry("fake_gt", f"{module.__name__}:create", (), -1, "test: ground-truth poses",
                                     GroundTruthConfig))
    return "fake_gt"


def use_sequence(monkeypatch: pytest.MonkeyPatch, **kwargs: object) -> None:
    """Make `recon replay` read a TinySequence whatever path it is given (honouring --on-error)."""
    monkeypatch.setattr(replay, "open_sequence_for_replay",
                        lambda path, on_error: TinySequence(on_error=on_error, **kwargs))


def test_replay_writes_every_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_backend: str) -> None:
    use_sequence(monkeypatch, n=8)
    out = tmp_path / "run"
    code = main(["replay", "seq", "--backend", fake_backend, "--out", str(out), "--no-progress"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"trajectory.tum", "points.ply", "recording.rrd", "metrics.json",
                                               "summary.json", "frames"}  # frames: the default --export

    # TUM round trip: the written poses are the ground truth, in order. The file holds exact nanoseconds, but
    # read_tum_trajectory parses seconds as float64, which resolves epoch-scale times to ~0.1 us only.
    t_ns, T = read_tum_trajectory(out / "trajectory.tum")
    seq = TinySequence(n=8)
    np.testing.assert_allclose(t_ns - seq.ground_truth.t_ns, 0, atol=1_000)
    stamps = [line.split()[0] for line in (out / "trajectory.tum").read_text().splitlines()[1:]]
    assert stamps[1] == "1700000000.050000000"
    np.testing.assert_allclose(T, seq.ground_truth.T_world_cam, atol=1e-6)

    import open3d as o3d

    cloud = o3d.io.read_point_cloud(str(out / "points.ply"))
    assert len(cloud.points) > 0 and cloud.has_colors()
    pts = np.asarray(cloud.points)
    # every point lies on one of the planes the frames saw: depth 1.5..2.2 m in front of some camera
    assert np.isfinite(pts).all() and pts[:, 2].min() > 1.0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ate_rmse"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["align"] == "se3"  # the fake backend is metric
    assert metrics["num_matched"] == 8

    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == fake_backend and summary["frames_in"] == 8 and summary["results_out"] == 8
    assert summary["frames_skipped"] == 0 and summary["stopped_on_error"] is None
    assert summary["fps"] > 0 and summary["extra"]["ply_points"] == len(cloud.points)
    assert set(summary["outputs"]) >= {"trajectory", "points", "metrics", "rerun_rrd"}

    seqs: set[int] = set()
    for chunk in rr_chunk.RrdReader(out / "recording.rrd").stream():
        if chunk.entity_path == "/world/tiny/cam":
            seqs.update(chunk.to_record_batch().column("seq").to_pylist())
    assert seqs == set(range(8))


def test_replay_stops_on_corrupt_frame_with_exit_code_and_partial_outputs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_backend: str, capsys: pytest.CaptureFixture) -> None:
    use_sequence(monkeypatch, n=8, corrupt_at=3)
    out = tmp_path / "run"
    code = main(["replay", "seq", "--backend", fake_backend, "--out", str(out), "--viewer", "none", "--no-progress"])
    assert code == 1
    assert "/data/tiny/rgb/0003.png" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert "0003.png" in summary["stopped_on_error"] and summary["frames_in"] == 3
    # frames before the corrupt one are written, including the one the late backend still held
    t_ns, _ = read_tum_trajectory(out / "trajectory.tum")
    assert len(t_ns) == 3
    assert not (out / "recording.rrd").exists()


def test_replay_skips_corrupt_frame_and_counts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  fake_backend: str) -> None:
    use_sequence(monkeypatch, n=8, corrupt_at=3)
    out = tmp_path / "run"
    code = main(["replay", "seq", "--backend", fake_backend, "--out", str(out), "--viewer", "none",
                 "--on-error", "skip", "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_skipped"] == 1 and summary["skipped_paths"] == ["/data/tiny/rgb/0003.png"]
    assert summary["frames_in"] == 7
    assert json.loads((out / "metrics.json").read_text())["num_matched"] == 7


def test_replay_stride_and_max_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_backend: str) -> None:
    use_sequence(monkeypatch, n=10)
    out = tmp_path / "run"
    assert main(["replay", "seq", "--backend", fake_backend, "--out", str(out), "--viewer", "none",
                 "--stride", "2", "--max-frames", "3", "--no-progress"]) == 0
    t_ns, _ = read_tum_trajectory(out / "trajectory.tum")
    np.testing.assert_allclose(t_ns - np.array([TinySequence.t_ns(i) for i in (0, 2, 4)]), 0, atol=1_000)


def test_default_out_dir_is_runs_sequence_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               fake_backend: str) -> None:
    use_sequence(monkeypatch, n=2, name="office")
    monkeypatch.chdir(tmp_path)
    assert main(["replay", "seq", "--backend", fake_backend, "--viewer", "none", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "office" / "summary.json").exists()


def test_auto_backend_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_weights_installed",
                        lambda names: (not names, "needs no weights" if not names else f"weights {names[0]!r} missing"))
    name, why = replay.choose_backend("auto")
    assert name == "geometric"
    assert why.startswith("no model weights installed: using the weight-free geometric backend")
    assert "infinitevggt" in why and "recon weights pull" in why
    assert replay.choose_backend("geometric") == ("geometric", "requested with --backend geometric")


def test_bad_arguments_fail_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_backend: str) -> None:
    use_sequence(monkeypatch, n=2)
    base = ["replay", "seq", "--out", str(tmp_path), "--no-progress"]
    assert main([*base, "--backend", "no_such_backend"]) == 1
    assert main([*base, "--backend", fake_backend, "--viewer", "spawn"]) == 1
    assert main([*base, "--backend", fake_backend, "--stride", "0"]) == 1
    assert main([*base, "--weights", "x.pth"]) == 1  # weights without naming the model
    assert main([*base, "--backend", fake_backend, "--backend-opt", "late=False", "--viewer", "none"]) == 0
    assert main([*base, "--backend", fake_backend, "--backend-opt", "nokey"]) == 1  # not KEY=VALUE


# --- the sinks on their own -------------------------------------------------------------------------------------


def results_of(n: int, stream: str = "s") -> list[FrameResult]:
    backend = GroundTruthBackend(late=False)
    return [r for f in TinySequence(n=n, name=stream) for r in backend.step(f)]


def test_trajectory_writer_keeps_last_update_and_splits_streams(tmp_path: Path) -> None:
    writer = TrajectoryWriter(tmp_path / "traj.tum")
    first = results_of(3)
    for r in first:
        writer.on_result(r)
    revised = FrameResult("s", 1, first[1].t_ns, np.eye(4), K, is_update=True)
    writer.on_result(revised)
    np.testing.assert_allclose(writer.trajectory().T_world_cam[1], np.eye(4))
    for r in results_of(2, stream="other"):
        writer.on_result(r)
    writer.close()
    assert {p.name for p in writer.paths.values()} == {"traj.s.tum", "traj.other.tum"}
    t_ns, T = read_tum_trajectory(tmp_path / "traj.s.tum")
    assert len(t_ns) == 3
    np.testing.assert_allclose(T[1], np.eye(4), atol=1e-9)


def test_voxel_accumulator_memory_is_bounded_by_the_scene() -> None:
    acc = VoxelAccumulator(voxel_size=0.1, buffer_points=5_000)
    rng = np.random.default_rng(1)
    for _ in range(30):  # the same 1 m cube observed again and again: at most 10^3 voxels
        acc.add(rng.random((2_000, 3)), rng.integers(0, 255, (2_000, 3), dtype=np.uint8))
        assert len(acc) <= 1_000 + 5_000 + 2_000
    xyz, rgb = acc.points()
    assert 990 <= len(xyz) <= 1_000
    assert acc.points_added == 60_000 and rgb.min() >= 0 and rgb.max() <= 1
    # each output point is the mean of its voxel's points: it lies inside that voxel, near its centre
    centres = (np.floor(xyz / 0.1) + 0.5) * 0.1
    assert np.abs(xyz - centres).max() < 0.02


def test_voxel_accumulator_is_exact_whatever_the_buffer() -> None:
    rng = np.random.default_rng(2)
    chunks = [rng.normal(size=(500, 3)) for _ in range(8)]
    results = []
    for buffer_points in (100, 10_000):
        acc = VoxelAccumulator(voxel_size=0.25, buffer_points=buffer_points)
        for c in chunks:
            acc.add(c, None)
        xyz, _ = acc.points()
        results.append(xyz[np.lexsort(xyz.T)])
    np.testing.assert_allclose(results[0], results[1], atol=1e-12)


def test_the_replay_flushes_late_results_and_ply_skips_updates(tmp_path: Path) -> None:
    ply = PointCloudWriter(tmp_path / "p.ply", voxel_size=0.05)
    traj = TrajectoryWriter(tmp_path / "t.tum")
    group = SinkGroup([traj, ply])
    stats = run_replay_inproc(TinySequence(n=5), GroundTruthBackend(late=True), group)
    group.close()
    assert stats.frames_in == 5 and stats.results_out == 5 and stats.metric is True
    assert len(traj.trajectory()) == 5 and ply.points_written > 0
    assert set(group.time_s) == {"trajectory", "ply"}


def test_ply_writer_without_points_writes_an_empty_valid_file(tmp_path: Path) -> None:
    writer = PointCloudWriter(tmp_path / "p.ply")
    writer.on_result(FrameResult("s", 0, 0, np.eye(4), K))  # a pose without depth or points
    writer.close()
    assert (tmp_path / "p.ply").read_text().startswith("ply\n") and writer.points_written == 0


def test_replay_runs_the_real_geometric_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plumbing with the weight-free backend (accuracy is tested with the backend): metric RGB-D in, SE(3) metrics."""
    use_sequence(monkeypatch, n=4)
    out = tmp_path / "run"
    assert main(["replay", "seq", "--backend", "geometric", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "geometric" and summary["results_out"] >= 1
    # One trajectory row per frame with a pose: untracked results (random frames lose RGB-D tracking) get none.
    records = [json.loads(line) for line in (out / "frames" / "frames.jsonl").read_text().splitlines()]
    tracked = {r["seq"] for r in records if r["tracked"]}
    assert len(records) == summary["results_out"] and tracked
    assert len(read_tum_trajectory(out / "trajectory.tum")[0]) == len(tracked)
    assert json.loads((out / "metrics.json").read_text())["align"] == "se3"


def test_select_points_filters_confidence_invalid_depth_and_caps() -> None:
    from recon.sinks import PointSelection, select_points

    r = results_of(1)[0]
    r.depth = r.depth.copy()
    r.depth[0, :] = 0.0  # invalid row
    xyz, rgb = select_points(r, PointSelection(stride=1, conf_quantile=0.5, max_points=None))
    # the quantile is taken over valid points only: the more confident half of the (H - 1) * W valid ones
    assert len(xyz) == (H - 1) * W // 2 and rgb is not None and rgb.dtype == np.uint8
    xyz_all, _ = select_points(r, PointSelection(stride=1, conf_quantile=0.0, max_points=None))
    assert len(xyz_all) == (H - 1) * W
    capped, _ = select_points(r, PointSelection(stride=2, max_points=10))
    assert len(capped) == 10
    # a result with depth only is back-projected; colours at another resolution are resampled to the grid
    bare = FrameResult("s", 0, 0, r.T_world_cam, K, depth=np.full((H, W), 2.0, np.float32),
                       image=np.zeros((2 * H, 2 * W, 3), np.uint8))
    pts, colours = select_points(bare, PointSelection(stride=1, max_points=None))
    assert pts.shape == (H * W, 3) and colours.shape == (H * W, 3)
    np.testing.assert_allclose(np.linalg.norm(pts - r.T_world_cam[:3, 3], axis=1).min(), 2.0, rtol=1e-5)
