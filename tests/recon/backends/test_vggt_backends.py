"""The `vggt` and `streamvggt` backends with the tiny random model: interface, conversions, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from recon.backends import create_backend
from recon.backends.base import Backend
from recon.errors import BackendError, WeightsNotFoundError
from recon.types import Frame
from tests.recon.backends._synthetic import SyntheticSequence, frames


def _check(result, h: int, w: int) -> None:
    assert result.T_world_cam.shape == (4, 4) and np.isfinite(result.T_world_cam).all()
    R = result.T_world_cam[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert result.depth.shape == (h, w) and result.confidence.shape == (h, w)
    assert result.points_world.shape == (h, w, 3) and result.image.shape == (h, w, 3)
    assert result.metric is False
    # K belongs to the model grid: principal point at its centre.
    np.testing.assert_allclose(result.K[:2, 2], [w / 2, h / 2])


def test_streamvggt_tiny_end_to_end() -> None:
    backend = create_backend("streamvggt", model_config="tiny", image_width=56, device="cpu")
    assert isinstance(backend, Backend)
    sizes = []
    for frame in frames(4):
        out = backend.step(frame)
        assert [r.seq for r in out] == [frame.seq]
        _check(out[0], 42, 56)
        sizes.append(backend.stats().tokens_cached)
    assert sizes == [4 * 17 * (i + 1) for i in range(4)]  # 4 layers x (5 + 3*4 tokens) per frame, unbounded
    assert backend.stats().frames_in == 4
    assert backend.flush() == []
    with pytest.raises(BackendError, match="resolution"):
        backend.step(Frame("cam", 9, 9, np.zeros((30, 80, 3), np.uint8)))
    backend.reset()
    assert backend.stats().tokens_cached == 0
    assert len(backend.step(Frame("cam", 10, 10, np.zeros((30, 80, 3), np.uint8)))) == 1


def test_streamvggt_points_are_depth_unprojected_with_pose_and_K() -> None:
    backend = create_backend("streamvggt", model_config="tiny", image_width=56, device="cpu")
    r = backend.step(frames(1)[0])[0]
    K, T = r.K, r.T_world_cam
    v, u = 10, 20
    ray = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0]) * r.depth[v, u]
    np.testing.assert_allclose(T[:3, :3] @ ray + T[:3, 3], r.points_world[v, u], rtol=1e-5, atol=1e-5)


def test_vggt_clips_emit_every_frame_once_in_order() -> None:
    backend = create_backend("vggt", model_config="tiny", image_width=56, clip_length=3, overlap=1, device="cpu")
    out = []
    for frame in frames(6):
        out += backend.step(frame)
    assert [r.seq for r in out] == [0, 1, 2, 3, 4]  # clip 1: 0-2, clip 2: 2(overlap)-4
    out += backend.flush()
    assert [r.seq for r in out] == list(range(6))
    for r in out:
        _check(r, 42, 56)
    assert backend.flush() == []


def test_missing_weights_name_the_file_and_the_fix(tmp_path) -> None:
    for name, expected in (("streamvggt", "checkpoints.pth"), ("vggt", "model.safetensors")):
        with pytest.raises(WeightsNotFoundError) as err:
            create_backend(name, weights=str(tmp_path / "nothing.pth"))
        message = str(err.value)
        assert expected in message and str(tmp_path) in message and "recon weights pull" in message


@pytest.mark.parametrize("backend", ["streamvggt", "vggt"])
def test_replay_runs_a_synthetic_sequence_with_the_tiny_model(backend, tmp_path, monkeypatch) -> None:
    from recon.cli import main
    from recon.commands import replay

    monkeypatch.setattr(replay, "open_sequence_for_replay", lambda path, on_error: SyntheticSequence(5))
    code = main(["replay", "synthetic", "--backend", backend, "--backend-opt", "model_config='tiny'",
                 "--backend-opt", "image_width=56", "--viewer", "none", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    rows = [r for r in (tmp_path / "trajectory.tum").read_text().splitlines() if not r.startswith("#")]
    assert len(rows) == 5
    assert (tmp_path / "points.ply").stat().st_size > 0
