"""The `horizonstream` backend with the tiny random model: live emission per chunk, conventions at the boundary,
constant memory, refusals, and `recon replay` end to end."""

from __future__ import annotations

import numpy as np
import pytest

from recon.backends import create_backend
from recon.backends.base import Backend
from recon.errors import BackendError, ConfigError, WeightsNotFoundError
from recon.types import Frame
from tests.recon.backends._synthetic import SyntheticSequence, frames


def test_emits_each_frame_when_its_chunk_is_averaged() -> None:
    backend = create_backend("horizonstream", model_config="tiny", device="cpu", sliding_size=1)
    assert isinstance(backend, Backend)
    emitted, memory = [], []
    for frame in frames(9):
        emitted.append([r.seq for r in backend.step(frame)])
        memory.append(backend.stats().memory_bytes)
    # Window of 4, then one frame per step (sliding size 1): poses are live, not deferred to the end.
    assert emitted == [[], [], [], [0, 1, 2, 3], [4], [5], [6], [7], [8]]
    assert len(set(memory[4:])) == 1  # constant memory once the first window is through
    stats = backend.stats()
    assert stats.frames_in == stats.results_out == 9 and stats.tokens_cached > 0
    assert backend.flush() == []
    assert backend.stats().tokens_cached == 0  # the carried state is dropped at the end of the stream


def test_results_follow_the_conventions() -> None:
    backend = create_backend("horizonstream", model_config="tiny", device="cpu", sliding_size=2)
    out = []
    for frame in frames(7):
        out += backend.step(frame)
    out += backend.flush()
    assert [r.seq for r in out] == list(range(7))
    for r in out:
        assert r.metric is True
        R = r.T_world_cam[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) > 0
        h, w = r.depth.shape
        assert (h, w) == (56, 70) and r.points_world.shape == (h, w, 3) and r.image.shape == (h, w, 3)
        np.testing.assert_allclose(r.K[:2, 2], [w / 2, h / 2])
        v, u = 10, 20
        ray = np.array([(u - r.K[0, 2]) / r.K[0, 0], (v - r.K[1, 2]) / r.K[1, 1], 1.0]) * r.depth[v, u]
        np.testing.assert_allclose(R @ ray + r.T_world_cam[:3, 3], r.points_world[v, u], rtol=1e-5, atol=1e-5)
    # World = the first frame's camera.
    np.testing.assert_allclose(out[0].T_world_cam, np.eye(4), atol=1e-5)


def test_refusals_and_reset() -> None:
    with pytest.raises(ConfigError, match="sliding_size"):
        create_backend("horizonstream", model_config="tiny", device="cpu", sliding_size=0)
    backend = create_backend("horizonstream", model_config="tiny", device="cpu")
    backend.step(frames(1)[0])
    with pytest.raises(BackendError, match="resolution"):
        backend.step(Frame("cam", 9, 9, np.zeros((30, 80, 3), np.uint8)))
    backend.reset()
    assert backend.stats().memory_bytes == 0 and backend.stats().frames_in == 0
    out = [r for f in frames(2, h=30) for r in backend.step(f)] + backend.flush()
    assert [r.seq for r in out] == [0, 1]  # a stream shorter than one window still gets its poses


def test_missing_weights_name_the_file_and_the_fix(tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        create_backend("horizonstream", weights=str(tmp_path / "nothing.pt"), device="cpu")
    message = str(err.value)
    assert "HorizonStream.pt" in message and str(tmp_path) in message and "recon weights pull" in message


def test_replay_runs_a_synthetic_sequence_with_the_tiny_model(tmp_path, monkeypatch) -> None:
    from recon.cli import main
    from recon.commands import replay

    monkeypatch.setattr(replay, "open_sequence_for_replay", lambda path, on_error, **kw: SyntheticSequence(7))
    code = main(["replay", "synthetic", "--backend", "horizonstream", "--model-config", "tiny", "--sliding-size", "2",
                 "--viewer", "none", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    rows = [r for r in (tmp_path / "trajectory.tum").read_text().splitlines() if not r.startswith("#")]
    assert len(rows) == 7
    assert (tmp_path / "points.ply").stat().st_size > 0
