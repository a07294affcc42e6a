"""Every checkpointable backend continues exactly where it was after a save, a trip through disk and a load.

The contract (recon.backends.base.Checkpointable, used by the reconstruction node's restart): a backend that
stepped frames 0..k-1, was saved, written with `recon.checkpoint.CheckpointStore`, read back and loaded into a
freshly built backend with the same options, emits for frames k.. (and its flush) what the uninterrupted backend
emits: same seqs, same poses and depths. Deterministic CPU arithmetic on the same inputs in the same order gives
bit-identical numbers, so the tolerance only absorbs float32 printing-level noise (1e-6).

The geometric backend runs through its adapter (recon.backends.geometric.state) until its class implements the
protocol; the same test then covers it unchanged. `streamvggt` is `infinitevggt`'s class with an unbounded policy:
the infinitevggt cases (dynamic and static caches) cover its state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recon.backends import create_backend
from recon.backends.base import BackendState
from recon.checkpoint import CheckpointStore, SessionCheckpoint, backend_state, restore_backend_state
from recon.errors import StateError
from recon.types import Frame, FrameResult
from tests.recon.backends._synthetic import frames as rolled_frames

pytestmark = pytest.mark.timeout(300)

TOKENS_PER_FRAME = 5 + 3 * 4  # tiny model, 42x56 grid (see tests/recon/memory/test_infinitevggt_backend.py)

CASES = {
    "identity": ("identity", {"window": 2, "drift": 0.25}, "rolled", 9, 4),
    "infinitevggt": ("infinitevggt", {"model_config": "tiny", "image_width": 56, "device": "cpu",
                                      "budget": 4 * 2 * TOKENS_PER_FRAME, "camera_window": 1}, "rolled", 7, 4),
    "infinitevggt-static": ("infinitevggt", {"model_config": "tiny", "image_width": 56, "device": "cpu",
                                             "budget": 4 * 2 * TOKENS_PER_FRAME, "camera_window": 1, "static": True},
                            "rolled", 7, 4),
    "horizonstream": ("horizonstream", {"model_config": "tiny", "device": "cpu", "sliding_size": 1}, "rolled", 8, 5),
    "laser": ("laser", {"backbone": "pi3", "model_config": "tiny", "device": "cpu", "window_size": 4, "overlap": 2,
                        "image_width": 56},
              "rolled", 9, 5),
    "vggt": ("vggt", {"model_config": "tiny", "image_width": 56, "clip_length": 3, "overlap": 1, "device": "cpu"},
             "rolled", 8, 4),
    "geometric-rgbd": ("geometric", {}, "rgbd", 10, 5),
    "geometric-mono": ("geometric", {"mode": "mono"}, "rgbd", 14, 8),
    # recon.map around it (the CLI default for geometric): keyframes, vocabulary and graph travel with the state
    "geometric-rgbd-map": ("geometric", {"loop_closure": True, "map": {"vocabulary_after": 2, "min_loop_gap": 1}},
                           "rgbd", 14, 8),
    "geometric-mono-map": ("geometric", {"mode": "mono", "loop_closure": True,
                                         "map": {"vocabulary_after": 2, "min_loop_gap": 1}}, "rgbd", 14, 8),
}


@pytest.fixture(scope="module")
def rgbd_frames(tmp_path_factory: pytest.TempPathFactory) -> list[Frame]:
    from recon.datasets import open_sequence, synthetic

    path = synthetic.generate_sequence(tmp_path_factory.mktemp("seq") / "walk", seed=4, trajectory="walk",
                                       num_frames=14, width=128, height=96, supersample=1)
    return list(open_sequence(str(path)))


def _frames(kind: str, n: int, rgbd: list[Frame]) -> list[Frame]:
    return rolled_frames(n) if kind == "rolled" else rgbd[:n]


def _run(backend: object, frames: list[Frame], flush: bool) -> list[FrameResult]:
    out: list[FrameResult] = []
    for f in frames:
        out += backend.step(f)  # type: ignore[attr-defined]
    if flush:
        out += backend.flush()  # type: ignore[attr-defined]
    return out


def _assert_same(got: list[FrameResult], want: list[FrameResult]) -> None:
    assert [(r.seq, r.is_update) for r in got] == [(r.seq, r.is_update) for r in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.T_world_cam, w.T_world_cam, rtol=0, atol=1e-6)
        np.testing.assert_allclose(g.K, w.K, rtol=0, atol=1e-6)
        if w.depth is not None:
            np.testing.assert_allclose(g.depth, w.depth, rtol=0, atol=1e-6)


def _through_disk(tmp_path: Path, name: str, options: dict, state: BackendState) -> BackendState:
    store = CheckpointStore(tmp_path / "state")
    store.save(SessionCheckpoint("cam", name, options, state, {"session": 0}))
    ckpt = store.load("cam")
    store.check_backend(ckpt, name, options)
    return ckpt.state


@pytest.mark.parametrize("case", list(CASES))
def test_a_restored_backend_continues_exactly(case: str, tmp_path: Path, rgbd_frames: list[Frame]) -> None:
    name, options, kind, n, k = CASES[case]
    frames = _frames(kind, n, rgbd_frames)
    if kind == "rolled":
        frames = [Frame(f.stream_id, f.seq, f.t_ns, f.image) for f in frames]
    reference = _run(create_backend(name, **options), frames, flush=True)
    assert len({r.seq for r in reference}) == n, "the reference emits every frame"

    first = create_backend(name, **options)
    before = _run(first, frames[:k], flush=False)
    state = _through_disk(tmp_path, name, options, backend_state(first))
    after_first = _run(first, frames[k:], flush=True)  # the saved backend itself is not disturbed by saving
    restored = create_backend(name, **options)
    restore_backend_state(restored, state)
    after = _run(restored, frames[k:], flush=True)

    _assert_same(before + after, reference)
    _assert_same(before + after_first, reference)
    if hasattr(first, "close"):
        first.close()
        restored.close()


def test_a_state_is_refused_by_another_configuration_or_version(tmp_path: Path) -> None:
    backend = create_backend("identity", window=2)
    backend.step(Frame("cam", 0, 0, np.zeros((4, 4, 3), np.uint8)))
    state = backend_state(backend)
    with pytest.raises(StateError, match="window"):
        restore_backend_state(create_backend("identity", window=3), state)
    newer = BackendState(state.backend, state.version + 1, state.config, state.arrays, state.meta)
    with pytest.raises(StateError, match="version"):
        restore_backend_state(create_backend("identity", window=2), newer)
    with pytest.raises(StateError, match="identity"):
        restore_backend_state(create_backend("geometric"), state)


def test_a_checkpoint_is_refused_when_damaged_or_written_by_another_backend(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    backend = create_backend("identity", drift=1.0)
    backend.step(Frame("cam/1", 0, 0, np.zeros((4, 4, 3), np.uint8)))
    store.save(SessionCheckpoint("cam/1", "identity", {"drift": 1.0}, backend_state(backend), {"session": 3}))
    assert store.stream_ids() == ["cam/1"] and store.load_record("cam/1")["session"] == 3
    ckpt = store.load("cam/1")
    with pytest.raises(StateError, match="backend 'identity'"):
        store.check_backend(ckpt, "geometric", {})
    with pytest.raises(StateError, match="options"):
        store.check_backend(ckpt, "identity", {"drift": 2.0})
    arrays = next(store.folder("cam/1").glob("arrays-*.safetensors"))
    arrays.write_bytes(arrays.read_bytes()[:-3])
    with pytest.raises(StateError, match="damaged"):
        store.load("cam/1")
    (store.folder("cam/1") / "manifest.msgpack").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(StateError, match="msgpack"):
        store.load("cam/1")
    moved = store.discard("cam/1", "test")
    assert moved is not None and moved.exists() and not store.exists("cam/1")


def test_a_save_is_atomic_and_keeps_one_generation(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    backend = create_backend("identity")
    for i in range(3):
        backend.step(Frame("s", i, i, np.zeros((4, 4, 3), np.uint8)))
        store.save(SessionCheckpoint("s", "identity", {}, backend_state(backend), {"frames": i + 1}))
    files = sorted(p.name for p in store.folder("s").iterdir())
    assert len(files) == 2 and files[1] == "manifest.msgpack" and files[0].startswith("arrays-")
    assert store.load_record("s")["frames"] == 3


def test_a_map_state_is_refused_without_the_map_layer_or_from_another_map_version(
        rgbd_frames: list[Frame]) -> None:
    """A state saved with loop closure off, or by a build with another map state layout, is refused with the
    reason."""
    name, options, _, _, k = CASES["geometric-rgbd-map"]
    mapped = create_backend(name, **options)
    _run(mapped, rgbd_frames[:k], flush=False)
    state = backend_state(mapped)
    plain = create_backend("geometric")
    _run(plain, rgbd_frames[:k], flush=False)
    with pytest.raises(StateError, match="no map layer .*same --loop-closure setting"):
        restore_backend_state(create_backend(name, **options), backend_state(plain))
    state.meta["map"] = {**state.meta["map"], "version": state.meta["map"]["version"] - 1}
    with pytest.raises(StateError, match="another version of recon"):
        restore_backend_state(create_backend(name, **options), state)
