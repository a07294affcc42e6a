"""Measured Sim(3) odometry edges (recon.map.odometry) on the rendered loop of `_loop.py`.

A windowed learned backend's scale jumps from chunk to chunk. `DriftingBackend(chunk=12, jumps=...)` gives the
ground-truth point maps (in arbitrary units) such jumps, plus the usual yaw and climb drift, so the loop must be
closed in both cases. With the backend's relative pose as the odometry edge (scale 1 everywhere, the behaviour
before this module) a loop can only correct the product of the jumps, spread evenly over the path: the jumps'
zero-mean part stays in the map. With measured edges each jump is an edge's own scale and the loop has only the
measurement noise left to spread.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recon.backends.base import BackendState
from recon.eval.trajectory import absolute_trajectory_error, trajectory_length
from recon.map import MapOptions, MappedBackend, OdometryRecorder
from recon.map.keyframes import Keyframe
from recon.map.metrics import segment_scales
from recon.map.odometry import OdometryOptions, measure_edge
from recon.map.verify import VerifyOptions
from recon.types import ChunkLink, Frame, FrameResult
from tests.recon.map._loop import DriftingBackend, OraclePointMaps, loop_frames

pytestmark = pytest.mark.timeout(300)
N_LOOP = 72
CHUNK = 12
# Chunk scale jumps of 4-11 % either way (a learned backend's chunk-to-chunk scale error); their product is 0.965,
# so the loop sees only a 3.5 % scale error while the map's chunks are up to 8 % off each other.
JUMPS = (1.08, 0.93, 1.05, 0.90, 1.10, 0.96)


def _run(backend, frames: list[Frame]) -> dict[int, np.ndarray]:
    final: dict[int, np.ndarray] = {}
    for f in frames:
        final.update({r.seq: r.T_world_cam for r in backend.step(f)})
    final.update({r.seq: r.T_world_cam for r in backend.flush()})
    return final


def _true_scale(seq: int) -> float:
    """The drifting backend's accumulated scale at frame `seq` (its units over the oracle's)."""
    return float(np.prod([JUMPS[(q // CHUNK - 1) % len(JUMPS)] for q in range(CHUNK, seq + 1, CHUNK)]))


def _closed(edges: str, *, tag_chunks: bool = False, jumps: tuple[float, ...] = JUMPS):
    frames, gt = loop_frames(depth=True)
    tap = OdometryRecorder(DriftingBackend(OraclePointMaps(gt), yaw=math.radians(0.3), climb=0.004, chunk=CHUNK,
                                           jumps=jumps, tag_chunks=tag_chunks))
    mapped = MappedBackend(tap, MapOptions(odometry=OdometryOptions(edges=edges)))
    final = _run(mapped, frames)
    T = np.stack([final[s] for s in range(N_LOOP + 1)])
    return mapped, T, gt[: N_LOOP + 1]


def _scale_error(T: np.ndarray, gt: np.ndarray) -> float:
    """rms log-scale of 6-frame runs of the path against the ground truth."""
    return float(np.sqrt(np.mean(np.log(segment_scales(T, gt, 6)) ** 2)))


def _ate(T: np.ndarray, gt: np.ndarray) -> float:
    return absolute_trajectory_error(T, gt).rmse / trajectory_length(gt)


def test_measured_scale_edges_undo_chunk_scale_jumps_that_scale_one_edges_leave() -> None:
    old, T_old, gt = _closed("backend")
    new, T_new, _ = _closed("measured")
    for m in (old, new):
        assert len(m.loops) >= 1 and m.optimisations >= 1
    assert old.odometry_sources()["backend"] == len(old.keyframes) - 1
    sources = new.odometry_sources()
    # Textureless views (the room's bare walls) leave a few consecutive keyframes with < 10 shared ORB points.
    assert sources["points"] >= 0.8 * (len(new.keyframes) - 1) and sources["backend"] == 0, sources

    # Each point-measured edge finds its jump: the measured scale is the ratio of the two keyframes' units,
    # within 3 of its own sigmas (or 1 % where the sigma is floored: the oracle's points are nearest-pixel
    # samples of a 160x120 depth map, whose depth edges stay inside RANSAC's 5 % inlier band).
    for i, e in enumerate(new._edges):
        if e.source != "points":
            continue
        a, b = new.keyframes[i], new.keyframes[i + 1]
        expected = _true_scale(a.seq) / _true_scale(b.seq)
        assert abs(math.log(e.scale / expected)) < max(3 * e.scale_sigma, 0.01), (a.seq, b.seq, e, expected)

    # After closure: scale-1 edges keep most of the jumps (rms 3.4 % over 6-frame runs, the raw path has 3.7 %),
    # measured edges leave the measurement noise and the few fallbacks (1.6 %); ATE halves with it (0.26 % ->
    # 0.13 % of the path). Asserted with a third of the measured gain as headroom.
    old_scale, new_scale = _scale_error(T_old, gt), _scale_error(T_new, gt)
    assert old_scale > 0.025 and new_scale < 0.6 * old_scale, (old_scale, new_scale)
    assert _ate(T_new, gt) < 0.7 * _ate(T_old, gt), (_ate(T_old, gt), _ate(T_new, gt))


def test_chunk_tags_keep_each_chunk_rigid_and_put_the_scale_correction_at_the_joins() -> None:
    """A backend that says which chunk each result comes from (`FrameResult.chunk`, as LASER does): edges inside
    a chunk keep its scale (sigma 0.2 %), joins take the loop's scale correction. Every join here shrinks the map
    by 5 %, so the needed correction is a staircase; scale-1 edges spread it as a ramp over every keyframe."""
    jumps = (0.95,)
    tagged, T_tag, gt = _closed("measured", tag_chunks=True, jumps=jumps)
    assert tagged.odometry_sources()["chunk"] == len(tagged.keyframes) - 1
    assert set(tagged._joins) == set(range(N_LOOP // CHUNK + 1))  # 80 frames: chunks 0-6
    untagged, _, _ = _closed("backend", jumps=jumps)

    def spread_in_chunks(m: MappedBackend) -> float:
        """Largest log-range of the correction's scale among the keyframes of one chunk (0 for a rigid chunk)."""
        worst = 0.0
        for c in range(N_LOOP // CHUNK):
            s = [math.log(m._correction(k).s) for k, kf in enumerate(m.keyframes) if kf.seq // CHUNK == c]
            worst = max(worst, max(s) - min(s))
        return worst

    # Tagged: at most 0.2 % per edge over the ~5 edges of a chunk, pulled by the loop; untagged: 0.95^6 spread
    # over ~39 edges is 0.8 % per edge, 3-4 % across a chunk.
    assert spread_in_chunks(tagged) < 0.01 < 0.02 < spread_in_chunks(untagged), (spread_in_chunks(tagged),
                                                                                 spread_in_chunks(untagged))
    assert _scale_error(T_tag, gt) < 0.03


def _keyframe(index: int, n: int, seed: int) -> Keyframe:
    rng = np.random.default_rng(seed)
    return Keyframe(index, index, index, np.eye(4), rng.uniform(0, 160, (n, 2)).astype(np.float32),
                    rng.integers(0, 256, (n, 32), dtype=np.uint8), np.full((n, 3), np.nan, np.float32))


def test_an_edge_without_shared_points_falls_back_to_the_backend_and_metric_ones_stay_se3() -> None:
    a, b = _keyframe(0, 50, 1), _keyframe(1, 50, 2)  # unrelated descriptors, no 3-D
    K = np.array([[130.0, 0, 80], [0, 130.0, 60], [0, 0, 1]])
    kwargs = dict(verify=VerifyOptions(), options=OdometryOptions(), default_scale=0.02, chunks=(None, None),
                  joins={})
    up_to_scale = measure_edge(a, b, K, sim3=True, **kwargs)
    assert up_to_scale.source == "fallback" and up_to_scale.scale_sigma is None and up_to_scale.scale == 1.0
    assert measure_edge(a, b, K, sim3=False, **kwargs).source == "backend"
    # Chunks two joins apart: the sigmas of both joins add (one reported, one the default).
    joins = {1: ChunkLink(1, log_scale_sigma=0.03), 2: ChunkLink(2)}
    e = measure_edge(a, b, K, sim3=True, **{**kwargs, "chunks": (ChunkLink(0), ChunkLink(2)), "joins": joins})
    assert e.source == "chunk" and e.scale_sigma == pytest.approx(math.hypot(0.03, 0.02))


class _Tagged:
    """Ground-truth point maps with a chunk scale jump and chunk tags, computed from the seq alone (stateless),
    so the map layer's checkpoint is the whole state."""

    name = "tagged"

    def __init__(self, poses: np.ndarray) -> None:
        self.oracle = OraclePointMaps(poses)

    def reset(self) -> None:
        pass

    def step(self, frame: Frame) -> list[FrameResult]:
        out = []
        for r in self.oracle.step(frame):
            out.append(replace(r, chunk=ChunkLink(r.seq // CHUNK, np.eye(4), 100, 0.01 if r.seq >= CHUNK else None)))
        return out

    def flush(self) -> list[FrameResult]:
        return []

    def stats(self):
        return self.oracle.stats()

    def save_state(self) -> BackendState:
        return BackendState(self.name, 1, {}, {}, {})

    def load_state(self, state: BackendState) -> None:
        pass


def test_the_odometry_edges_and_chunks_travel_with_a_checkpoint() -> None:
    frames, gt = loop_frames(depth=True)
    whole = MappedBackend(_Tagged(gt))
    expected = _run(whole, frames)
    first = MappedBackend(_Tagged(gt))
    _run(first, frames[:40])
    restored = MappedBackend(_Tagged(gt))
    restored.load_state(first.save_state())
    assert restored.odometry_sources() == first.odometry_sources()
    got = _run(restored, frames[40:])
    assert whole.loops and restored.loops and restored.odometry_sources() == whole.odometry_sources()
    for seq in range(40, len(frames)):
        np.testing.assert_allclose(got[seq], expected[seq], atol=1e-9)


def test_replay_with_a_tiny_laser_and_loop_closure_writes_the_corrected_trajectory(tmp_path: Path) -> None:
    """`recon replay --backend laser --model-config tiny --loop-closure on` on a rendered loop: the lap closes at
    frame 24, so frames 24-35 repeat the first views exactly and even a random model's point maps agree there.
    Random weights reconstruct nothing, so this checks the plumbing: LASER's chunk links reach the map layer,
    loops close, updates are emitted and the trajectory file ends with the map layer's corrected poses."""
    from recon.backends import create_backend
    from recon.cli import main
    from recon.datasets import open_sequence
    from recon.datasets.degrade import Degradations
    from recon.datasets.synthetic import LOOP_SECONDS, generate_sequence
    from recon.io.trajectory import read_tum_trajectory

    seq = generate_sequence(tmp_path / "loop", seed=0, trajectory="loop", num_frames=36, width=96, height=72,
                            supersample=1, degradations=Degradations(speed=LOOP_SECONDS * 30.0 / 24))
    # Keyframes every 2 frames and a vocabulary after 4, so 36 frames make a loop; update_tolerance 0 re-emits
    # every frame the solve moved (a random model barely moves its cameras).
    map_opts = {"keyframe": {"max_gap": 2}, "vocabulary_after": 4, "min_loop_gap": 4, "update_tolerance": 0.0}
    laser = {"window_size": 4, "overlap": 2, "image_width": 56}
    out = tmp_path / "out"
    code = main(["replay", str(seq), "--backend", "laser", "--backbone", "pi3", "--model-config", "tiny",
                 "--device", "cpu", "--loop-closure", "on", "--out", str(out), "--viewer", "none", "--no-progress",
                 *[a for k, v in laser.items() for a in ("--backend-opt", f"{k}={v}")],
                 "--backend-opt", "map=" + __import__("json").dumps(map_opts)])
    assert code == 0
    _, T_file = read_tum_trajectory(out / "trajectory.tum")
    stats = __import__("json").loads((out / "summary.json").read_text())["backend_stats"]["extra"]
    assert stats["map_loops"] >= 1 and stats["map_optimisations"] >= 1
    assert stats["map_odometry"]["chunk"] == stats["map_keyframes"] - 1

    # The same backend in-process: its results carry LASER's windows, it emits updates, and its final pose per
    # frame is what the replay wrote.
    backend = create_backend("laser", backbone="pi3", model_config="tiny", device="cpu", loop_closure=True,
                             map=map_opts, **laser)
    results = []
    for f in open_sequence(str(seq)):
        results += backend.step(f)
    results += backend.flush()
    backend.inner.close()
    firsts = [r for r in results if not r.is_update]
    assert [r.seq for r in firsts] == list(range(36))
    assert [r.chunk.index for r in firsts[:6]] == [0, 0, 0, 0, 1, 1]  # window 0 emits 4 frames, then 2 a window
    assert firsts[0].chunk.S_prev_chunk is None
    assert firsts[4].chunk.S_prev_chunk.shape == (4, 4) and firsts[4].chunk.support > 0
    updates = [r for r in results if r.is_update]
    assert updates and {r.seq for r in updates} <= set(range(36))
    final = {r.seq: r.T_world_cam for r in results}
    assert any(not np.allclose(final[r.seq], r.T_world_cam) for r in firsts)  # the loop moved emitted frames
    np.testing.assert_allclose(T_file, np.stack([final[s] for s in range(36)]), atol=1e-5)


def test_the_geometric_backend_keeps_its_own_scale_between_keyframes_unless_asked() -> None:
    """Its keyframes share one map with its poses (the ratio is 1 by construction); learned backends measure it."""
    from recon.backends import create_backend, map_options_for

    assert create_backend("geometric", loop_closure=True).options.odometry.edges == "backend"
    asked = create_backend("geometric", loop_closure=True, map={"odometry": {"edges": "measured", "min_inliers": 12}})
    assert asked.options.odometry.edges == "measured" and asked.options.odometry.min_inliers == 12
    assert map_options_for("laser") == {}
    assert map_options_for("geometric", {"live": {"keyframes": 8}}) == {"odometry": {"edges": "backend"},
                                                                       "live": {"keyframes": 8}}
