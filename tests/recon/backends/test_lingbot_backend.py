"""The `lingbot` backend with the tiny random model: the backend contract (every frame once, in order, when its
prediction is final), conventions at the boundary, bounded memory, checkpoints (Checkpointable round trip and
refusals), option errors, `--backend auto`, and `recon replay` end to end in both modes."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from recon.backends import create_backend, select_auto
from recon.backends.base import Backend, BackendState, Checkpointable
from recon.errors import BackendError, ConfigError, StateError
from recon.types import Frame
from tests.golden.runners.lingbot import one_thread
from tests.recon.backends._synthetic import frames

SMALL = {"model_config": "tiny", "device": "cpu", "image_width": 56, "num_scale_frames": 2, "sliding_window": 3,
         "trajectory_frames": 3, "camera_window": 3}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202 - generator fixture
    with one_thread():
        yield


def _run(backend, items) -> tuple[list[list[int]], list]:
    per_step, results = [], []
    for frame in items:
        out = backend.step(frame)
        per_step.append([r.seq for r in out])
        results += out
    tail = backend.flush()
    per_step.append([r.seq for r in tail])
    return per_step, results + tail


@pytest.mark.parametrize("mode", ["stream", "windowed"])
def test_backend_contract(mode: str) -> None:
    options = dict(SMALL, mode=mode, keyframe_interval=2, window_size=4, overlap_keyframes=1)
    backend = create_backend("lingbot", **options)
    assert isinstance(backend, Backend) and isinstance(backend, Checkpointable)
    per_step, results = _run(backend, frames(13))
    assert [r.seq for r in results] == list(range(13))  # each frame exactly once, in order
    if mode == "stream":
        assert per_step == [[], [0, 1]] + [[i] for i in range(2, 13)] + [[]]
    else:  # windows (0,6) (4,10) (8,13): a window's last 2 frames wait for the next window or the end
        assert sum(per_step[:-1], []) == list(range(12)) and per_step[-1] == [12]
    stats = backend.stats()
    assert stats.frames_in == stats.results_out == 13 and stats.extra["pending_frames"] == 0
    assert stats.tokens_cached > 0 and stats.memory_bytes > 0
    backend.reset()
    _, again = _run(backend, frames(13))
    for a, b in zip(results, again, strict=True):
        np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)


def test_results_follow_the_conventions() -> None:
    backend = create_backend("lingbot", **SMALL)
    _, results = _run(backend, frames(6))
    for r in results:
        assert r.metric is False and r.tracked
        R = r.T_world_cam[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(R) > 0
        h, w = r.depth.shape
        assert (h, w) == (42, 56) and r.points_world.shape == (h, w, 3) and r.image.shape == (h, w, 3)
        np.testing.assert_allclose(r.K[:2, 2], [w / 2, h / 2])
        assert r.K[0, 0] > 0 and r.K[1, 1] > 0
        v, u = 10, 20
        ray = np.array([(u - r.K[0, 2]) / r.K[0, 0], (v - r.K[1, 2]) / r.K[1, 1], 1.0]) * r.depth[v, u]
        np.testing.assert_allclose(R @ ray + r.T_world_cam[:3, 3], r.points_world[v, u], rtol=1e-4, atol=1e-4)


def test_memory_stays_bounded_over_a_long_stream() -> None:
    backend = create_backend("lingbot", **SMALL, keyframe_interval=1)
    sizes = []
    for frame in frames(20):
        backend.step(frame)
        sizes.append((backend.stats().memory_bytes, backend.stats().tokens_cached))
    # Full once 2 scale + 3 window + 3 trajectory frames are stored (+1 the first eviction needs): flat after.
    assert len(set(sizes[9:])) == 1, sizes
    extra = backend.stats().extra
    assert extra["cache_frames"] == 5 and extra["trajectory_frames"] == 3
    assert extra["camera_cache_entries"] == [2 + 3] * 2


@pytest.mark.parametrize("mode", ["stream", "windowed"])
def test_checkpoint_round_trip_continues_the_same_world(mode: str) -> None:
    options = dict(SMALL, mode=mode, window_size=4)
    items = frames(11)
    _, reference = _run(create_backend("lingbot", **options), items)
    first = create_backend("lingbot", **options)
    got = []
    for frame in items[:7]:
        got += first.step(frame)
    state = first.save_state()
    assert isinstance(state, BackendState) and state.backend == "lingbot"
    msgpack.packb({"config": state.config, "meta": state.meta})  # plain data for the checkpoint writer
    assert all(hasattr(v, "shape") for v in state.arrays.values())
    second = create_backend("lingbot", **options)
    second.load_state(state)
    for frame in items[7:]:
        got += second.step(frame)
    got += second.flush()
    assert [r.seq for r in got] == list(range(11))
    for a, b in zip(reference, got, strict=True):
        np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)
        np.testing.assert_array_equal(a.depth, b.depth)


def test_checkpoints_of_other_configurations_are_refused() -> None:
    backend = create_backend("lingbot", **SMALL)
    for frame in frames(3):
        backend.step(frame)
    state = backend.save_state()
    other = create_backend("lingbot", **dict(SMALL, sliding_window=4))
    with pytest.raises(StateError, match="sliding_window"):
        other.load_state(state)
    with pytest.raises(StateError, match="version"):
        backend.load_state(BackendState("lingbot", 99, state.config, state.arrays, state.meta))
    with pytest.raises(StateError):
        backend.load_state(BackendState("infinitevggt", 1, state.config))
    damaged = BackendState("lingbot", state.version, state.config, {}, state.meta)
    with pytest.raises(StateError, match="damaged"):
        backend.load_state(damaged)


def test_option_errors_and_refusals() -> None:
    with pytest.raises(ConfigError, match="unknown option budget; valid options: anchor_frames"):
        create_backend("lingbot", model_config="tiny", budget=3)
    with pytest.raises(ConfigError, match="mode"):
        create_backend("lingbot", model_config="tiny", mode="offline")
    with pytest.raises(ConfigError, match="overlap"):
        create_backend("lingbot", model_config="tiny", mode="windowed", window_size=4, overlap_size=10)
    backend = create_backend("lingbot", **SMALL)
    backend.step(frames(1)[0])
    with pytest.raises(BackendError, match="grid"):
        backend.step(Frame("cam", 9, 9, np.zeros((30, 80, 3), np.uint8)))
    assert backend.stats().frames_in == 1  # the refused frame is not counted as pending


def test_auto_prefers_lingbot_when_its_weights_are_installed(monkeypatch, tmp_path) -> None:
    import recon.models.weights as weights

    installed = {"lingbot-map-long", "streamvggt"}
    monkeypatch.setattr(weights, "find_local_weights", lambda name, *a, **k: tmp_path / name if name in installed
                        else None)
    name, reason = select_auto()
    assert name == "lingbot" and "lingbot-map-long" in reason
    installed.discard("lingbot-map-long")
    assert select_auto()[0] == "infinitevggt"


@pytest.mark.parametrize("mode", ["stream", "windowed"])
def test_replay_end_to_end(tmp_path, mode: str) -> None:
    from recon.cli import main
    from recon.datasets import synthetic

    seq = synthetic.generate_sequence(tmp_path / "seq", seed=1, trajectory="walk", num_frames=12, width=80,
                                      height=60, supersample=1)
    out = tmp_path / "out"
    code = main(["replay", str(seq), "--backend", "lingbot", "--model-config", "tiny", "--mode", mode,
                 "--keyframe-interval", "2", "--device", "cpu", "-o", "image_width=56", "-o", "num_scale_frames=2",
                 "-o", "window_size=4", "--viewer", "none", "--out", str(out), "--no-progress"])
    assert code == 0
    rows = [r for r in (out / "trajectory.tum").read_text().splitlines() if not r.startswith("#")]
    assert len(rows) == 12


def test_a_failing_model_call_resets_and_names_the_dropped_frames(monkeypatch) -> None:
    backend = create_backend("lingbot", **SMALL)
    items = frames(4)
    backend.step(items[0])  # buffered: the scale phase needs 2 frames

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(backend.model, "forward_frames", boom)
    with pytest.raises(BackendError, match=r"frames \[0, 1\] were dropped"):
        backend.step(items[1])
    monkeypatch.undo()
    assert backend.stats().frames_in == 0 and backend.stats().extra["pending_frames"] == 0
    _, results = _run(backend, items[2:])
    assert [r.seq for r in results] == [2, 3]  # a new session, a new world frame
