"""The `infinitevggt` backend with the tiny random model: bounded memory, camera window, options, replay end to end."""

from __future__ import annotations

import numpy as np
import pytest

from recon.backends import create_backend, select_auto
from recon.backends.base import Backend
from recon.errors import ConfigError
from recon.types import Frame

TOKENS_PER_FRAME = 5 + 3 * 4  # 42x56 model grid: 3x4 patches plus camera and 4 registers


def _frames(n: int, h: int = 60, w: int = 80, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [Frame("cam", i, 1000 * i, np.roll(base, 3 * i, axis=1)) for i in range(n)]


def test_memory_is_bounded_and_results_are_valid() -> None:
    budget = 4 * 3 * TOKENS_PER_FRAME  # about three frames per layer
    backend = create_backend("infinitevggt", model_config="tiny", image_width=56, device="cpu", budget=budget,
                             camera_window=2)
    assert isinstance(backend, Backend) and backend.name == "infinitevggt"
    tokens, nbytes = [], []
    for frame in _frames(10):
        (result,) = backend.step(frame)
        assert result.seq == frame.seq and result.depth.shape == (42, 56)
        R = result.T_world_cam[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
        stats = backend.stats()
        tokens.append(stats.tokens_cached)
        nbytes.append(stats.memory_bytes)
    assert tokens[:3] == [4 * TOKENS_PER_FRAME * (i + 1) for i in range(3)]  # nothing pruned below the budget
    assert max(tokens) <= budget and tokens[-1] >= budget - 4 * TOKENS_PER_FRAME
    assert nbytes[-1] == nbytes[3]  # preallocated storage: allocated once, never grows
    stats = backend.stats()
    assert stats.extra["policy"] == "infinitevggt" and stats.extra["budget"] == budget
    assert stats.extra["camera_cache_entries"] == [12, 12]  # (frame 0 + 2 frames) x 4 refinement iterations
    assert [c.capacity for c in backend.session.camera_memory] == [13, 13]  # preallocated, never doubled
    assert sum(stats.extra["layer_budgets"]) <= budget
    backend.reset()
    assert backend.stats().tokens_cached == 0
    backend.step(_frames(1)[0])
    assert backend.stats().tokens_cached == 4 * TOKENS_PER_FRAME


def test_camera_window_zero_keeps_the_published_unbounded_camera_cache() -> None:
    backend = create_backend("infinitevggt", model_config="tiny", image_width=56, device="cpu", budget=10_000,
                             camera_window=0)
    for frame in _frames(5):
        backend.step(frame)
    assert backend.stats().extra["camera_cache_entries"] == [20, 20]


def test_baseline_policies_at_the_same_budget() -> None:
    budget = 4 * 2 * TOKENS_PER_FRAME
    for policy in ("sinks", "window"):
        backend = create_backend("infinitevggt", model_config="tiny", image_width=56, device="cpu", budget=budget,
                                 policy=policy)
        for frame in _frames(5):
            backend.step(frame)
        assert backend.stats().tokens_cached == budget and backend.stats().extra["policy"] == policy


@pytest.mark.parametrize("options", [{"budget": 0}, {"budget": "lots"}, {"policy": "lru"}, {"camera_window": -1}])
def test_bad_options_raise_config_errors(options: dict) -> None:
    with pytest.raises(ConfigError):
        create_backend("infinitevggt", model_config="tiny", device="cpu", **options)


def test_auto_prefers_infinitevggt_when_streamvggt_weights_are_installed(monkeypatch, tmp_path) -> None:
    import recon.models.weights as weights

    monkeypatch.setattr(weights, "find_local_weights", lambda name, *a, **k: tmp_path / "x" if name == "streamvggt"
                        else None)
    name, reason = select_auto()
    assert name == "infinitevggt" and "streamvggt" in reason


def test_replay_streams_a_synthetic_sequence_with_the_tiny_model(tmp_path) -> None:
    from recon.cli import main
    from recon.datasets import synthetic

    seq = synthetic.generate_sequence(tmp_path / "seq", seed=1, trajectory="walk", num_frames=8, width=80,
                                      height=60, supersample=1)
    out = tmp_path / "out"
    code = main(["replay", str(seq), "--backend", "infinitevggt", "--backend-opt", "model_config='tiny'",
                 "--backend-opt", "image_width=56", "--budget", str(4 * 3 * TOKENS_PER_FRAME),
                 "--backend-opt", "device='cpu'", "--viewer", "none", "--out", str(out), "--no-progress"])
    assert code == 0
    rows = [r for r in (out / "trajectory.tum").read_text().splitlines() if not r.startswith("#")]
    assert len(rows) == 8
    assert (out / "points.ply").stat().st_size > 0


def test_replay_budget_flag_is_refused_for_other_backends(tmp_path, caplog) -> None:
    from recon.cli import main
    from recon.datasets import synthetic

    seq = synthetic.generate_sequence(tmp_path / "seq", seed=1, num_frames=2, width=40, height=30, supersample=1)
    code = main(["replay", str(seq), "--backend", "geometric", "--budget", "1000", "--viewer", "none",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 1 and "--budget does not apply to the geometric backend" in caplog.text
