"""LASER backend plumbing with a mock window model: every frame emitted once, in order, with and without the
inference worker; resolution changes refused; memory bounded to the previous window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.backends.laser import LaserBackend
from recon.errors import BackendError
from recon.types import Frame, WindowPrediction


class PlaneModel:
    """Mock backbone: a fronto-parallel plane at depth 2 seen by cameras moving along x (own random Sim(3) per
    window is not needed here: this test is about plumbing, accuracy tests drive the engine directly)."""

    patch_size = 7

    def __init__(self) -> None:
        self.calls = 0

    def predict_window(self, images: torch.Tensor) -> WindowPrediction:
        self.calls += 1
        n, _, h, w = images.shape
        f = 0.8 * w
        rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                    indexing="ij")
        z = torch.full((h, w), 2.0)
        local = torch.stack([(cols - w / 2) * z / f, (rows - h / 2) * z / f, z], -1).expand(n, h, w, 3).clone()
        poses = torch.eye(4).repeat(n, 1, 1)
        # Frame index is encoded in the image brightness; camera i sits at x = 0.1 * i.
        index = (images[:, 0, 0, 0] * 255).round()
        poses[:, 0, 3] = 0.1 * index
        conf = torch.rand(n, h, w, generator=torch.Generator().manual_seed(self.calls))
        return WindowPrediction([], local, poses, conf)


def frames(n: int, h: int = 24, w: int = 32) -> list[Frame]:
    out = []
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[...] = i
        out.append(Frame("cam", i, 1_000_000 * i, img))
    return out


@pytest.mark.parametrize("overlap_inference", [True, False])
def test_every_frame_emitted_once_in_order(overlap_inference: bool) -> None:
    model = PlaneModel()
    backend = LaserBackend(model, window_size=6, overlap=2, image_width=28, depth_refine=True,
                           overlap_inference=overlap_inference)
    results = []
    for fr in frames(16):
        results += backend.step(fr)
    results += backend.flush()
    assert [r.seq for r in results] == list(range(16))
    assert [r.t_ns for r in results] == [1_000_000 * i for i in range(16)]
    assert model.calls == 4  # windows [0-5], [4-9], [8-13], [12-15]
    # The plane model's cameras move 0.1 per frame; registration chains windows onto window 0's frame.
    xs = np.array([r.T_world_cam[0, 3] for r in results])
    np.testing.assert_allclose(xs, 0.1 * np.arange(16), atol=1e-4)
    assert all(r.points_world.shape == r.depth.shape + (3,) for r in results)
    stats = backend.stats()
    assert stats.frames_in == 16 and stats.results_out == 16 and stats.extra["windows"] == 4
    backend.close()


def test_resolution_change_is_refused() -> None:
    backend = LaserBackend(PlaneModel(), window_size=4, overlap=1, image_width=28)
    backend.step(frames(1)[0])
    with pytest.raises(BackendError, match="resolution changed"):
        backend.step(frames(2, h=40, w=32)[1])
    backend.reset()
    backend.step(frames(2, h=40, w=32)[1])  # fine after a reset
    backend.close()


def test_memory_is_bounded_by_one_window() -> None:
    backend = LaserBackend(PlaneModel(), window_size=4, overlap=1, image_width=28, overlap_inference=False)
    held = []
    for fr in frames(30):
        backend.step(fr)
        held.append(backend.stats().memory_bytes)
    assert max(held[10:]) <= max(held[:10]) * 1.01


@pytest.mark.parametrize("backbone", ["pi3", "vggt"])
def test_tiny_backbones_run_end_to_end(backbone: str) -> None:
    from recon.backends import create_backend

    backend = create_backend("laser", backbone=backbone, model_config="tiny", device="cpu", window_size=4,
                             overlap=2, image_width=56, layer_downsample=1)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    results = []
    for i in range(7):
        results += backend.step(Frame("cam", i, i, np.roll(base, 2 * i, axis=1)))
    results += backend.flush()
    assert [r.seq for r in results] == list(range(7))
    for r in results:
        assert np.isfinite(r.T_world_cam).all() and np.isfinite(r.points_world).all()
        assert r.depth.shape == r.points_world.shape[:2] == (42, 56)
    backend.close()


def test_replay_cli_with_tiny_pi3(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    """`recon replay --backend laser --backbone pi3` end to end on a synthetic sequence (tiny random model)."""
    from recon.cli import main
    from recon.datasets.synthetic import generate_sequence
    from recon.io.trajectory import read_tum_trajectory

    seq = generate_sequence(tmp_path / "seq", seed=2, trajectory="orbit", num_frames=9, width=96, height=72,
                            supersample=1)
    out = tmp_path / "out"
    code = main(["replay", str(seq), "--backend", "laser", "--backbone", "pi3", "--model-config", "tiny",
                 "--device", "cpu", "--out", str(out), "--viewer", "none", "--no-progress",
                 "--backend-opt", "window_size=4", "--backend-opt", "overlap=2", "--backend-opt", "image_width=56"])
    assert code == 0
    t_ns, T = read_tum_trajectory(out / "trajectory.tum")
    assert len(t_ns) == 9 and np.isfinite(T).all()
    assert (out / "points.ply").stat().st_size > 0 and (out / "metrics.json").is_file()
