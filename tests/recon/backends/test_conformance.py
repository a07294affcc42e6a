"""The backend interface's contract (DESIGN.md §4, recon.backends.base.Backend) for every registered backend.

Each backend of recon's registry runs in a tiny configuration through one stream: every frame's result is emitted
exactly once (revisions only as `is_update` of a seq already emitted), results carry poses, intrinsics and a
`metric` flag, `stats` counts the frames, a resolution change within a session is refused, `reset` forgets the
stream (a flush after it emits nothing, and the same frames give the same results again), and an option the
backend does not take is an error that lists the options it does take.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recon.backends import create_backend, registered
from recon.backends.base import Backend
from recon.errors import BackendError, ConfigError
from recon.types import Frame, FrameResult
from tests.recon.backends._synthetic import frames as rolled_frames

pytestmark = pytest.mark.timeout(600)

TINY = {"model_config": "tiny", "device": "cpu", "image_width": 56}
# Registry name -> (tiny options, frames: "rolled" images or the "rgbd" synthetic walk, number of frames).
CASES: dict[str, tuple[dict, str, int]] = {
    "identity": ({"window": 2}, "rolled", 5),
    "geometric": ({}, "rgbd", 5),
    "vggt": ({**TINY, "clip_length": 3, "overlap": 1}, "rolled", 5),
    "streamvggt": (TINY, "rolled", 4),
    "infinitevggt": ({**TINY, "budget": 200, "camera_window": 1}, "rolled", 4),
    "horizonstream": ({"model_config": "tiny", "device": "cpu", "sliding_size": 1}, "rolled", 5),
    "laser": ({**TINY, "backbone": "pi3", "window_size": 4, "overlap": 2}, "rolled", 6),
    "lingbot": ({**TINY, "num_scale_frames": 2, "sliding_window": 3}, "rolled", 4),
}
BUILT_IN = sorted(name for name, entry in registered().items() if entry.factory.startswith("recon."))


def test_every_built_in_backend_has_a_tiny_case() -> None:
    assert sorted(CASES) == BUILT_IN


@pytest.fixture(scope="module")
def rgbd_frames(tmp_path_factory: pytest.TempPathFactory) -> list[Frame]:
    from recon.datasets import open_sequence, synthetic

    path = synthetic.generate_sequence(tmp_path_factory.mktemp("seq") / "walk", seed=4, trajectory="walk",
                                       num_frames=6, width=128, height=96, supersample=1)
    return list(open_sequence(str(path)))


def _stream(name: str, rgbd: list[Frame]) -> list[Frame]:
    _, kind, n = CASES[name]
    return rolled_frames(n) if kind == "rolled" else rgbd[:n]


def _run(backend: Backend, frames: list[Frame]) -> list[FrameResult]:
    out: list[FrameResult] = []
    for frame in frames:
        out += backend.step(frame)
    return out + backend.flush()


def _check_results(results: list[FrameResult], frames: list[Frame]) -> None:
    firsts = [r.seq for r in results if not r.is_update]
    assert sorted(firsts) == [f.seq for f in frames], "each frame's result exactly once (updates aside)"
    seen: set[int] = set()
    for r in results:
        assert isinstance(r, FrameResult)
        assert r.is_update == (r.seq in seen), f"seq {r.seq}: an update must follow the first result"
        seen.add(r.seq)
        assert isinstance(r.metric, bool)
        assert r.T_world_cam.shape == (4, 4) and np.isfinite(r.T_world_cam).all()
        np.testing.assert_allclose(r.T_world_cam[3], [0, 0, 0, 1])
        assert r.K.shape == (3, 3) and r.K[0, 0] > 0 and r.K[1, 1] > 0
        assert r.stream_id == frames[0].stream_id


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_backend_contract_holds(name: str, rgbd_frames: list[Frame]) -> None:
    options = CASES[name][0]
    frames = _stream(name, rgbd_frames)
    backend = create_backend(name, **options)
    assert isinstance(backend, Backend) and backend.name == name

    first = _run(backend, frames)
    _check_results(first, frames)
    stats = backend.stats()
    assert stats.frames_in == len(frames)
    assert stats.results_out == len(first)

    backend.reset()
    assert backend.flush() == [], "nothing is pending after reset"
    assert backend.stats().frames_in == 0
    again = _run(backend, frames)
    assert [(r.seq, r.is_update) for r in again] == [(r.seq, r.is_update) for r in first], "reset = a new backend"
    for a, b in zip(again, first, strict=True):
        np.testing.assert_allclose(a.T_world_cam, b.T_world_cam, rtol=0, atol=1e-5)

    backend.reset()
    backend.step(frames[0])
    f = frames[1]
    # Portrait instead of landscape: a different model grid too (learned backends resize to a fixed width).
    w = f.width // 2
    portrait = dataclasses.replace(f, image=np.ascontiguousarray(f.image[:, :w]), K=None,
                                   depth=None if f.depth is None else np.ascontiguousarray(f.depth[:, :w]))
    with pytest.raises(BackendError):
        backend.step(portrait)


@pytest.mark.parametrize("name", BUILT_IN)
def test_an_unknown_option_lists_the_valid_ones(name: str) -> None:
    config_cls = registered()[name].config
    with pytest.raises(ConfigError, match=f"{name} backend: unknown option typo") as info:
        create_backend(name, **CASES[name][0], typo=1)
    for field in dataclasses.fields(config_cls):
        assert field.name in str(info.value)


@pytest.mark.parametrize("name", BUILT_IN)
def test_replay_refuses_a_misspelt_option_before_reading_anything(name: str, tmp_path, caplog) -> None:
    from recon.cli import main

    missing = tmp_path / "no-such-sequence"
    code = main(["replay", str(missing), "--backend", name, "--backend-opt", "typo=1", "--viewer", "none",
                 "--no-progress", "--out", str(tmp_path / "out")])
    assert code != 0
    text = caplog.text
    assert "unknown option typo" in text
    assert all(f.name in text for f in dataclasses.fields(registered()[name].config))
