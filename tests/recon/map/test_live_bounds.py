"""The map layer's bounds for live streams (`MapOptions.live`, `recon.map.keyframes.LiveBounds`).

A live camera that circles one room for hours must not grow the map without bound: keyframes beyond the cap give
up their features (they stay pose-graph nodes), loop searches are spaced out, loops and per-frame records are
capped. Recorded sources keep everything, so a replay's results do not depend on the bounds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from recon.geometry import Sim3
from recon.map import MapOptions, MappedBackend
from recon.map.keyframes import LiveBounds
from recon.map.pose_graph import GraphNoise, consistent_loops
from recon.map.vocabulary import PlaceIndex
from recon.types import Frame
from tests.recon.map._loop import DriftingBackend, OraclePointMaps, loop_frames

pytestmark = pytest.mark.timeout(300)
LAPS = 2


def _laps(live: bool) -> tuple[list[Frame], np.ndarray]:
    """The rendered loop driven round `LAPS` times (seq keeps counting), as a live or a recorded stream."""
    frames, poses = loop_frames(depth=True, n_loop=72, extra=0)
    n = len(frames)
    out = [Frame("cam", k, k * 33_333_333, frames[k % n].image, K=frames[k % n].K, depth=frames[k % n].depth,
                 meta={"live": live}) for k in range(LAPS * n)]
    return out, np.concatenate([poses] * LAPS)


def _mapped(poses: np.ndarray, bounds: LiveBounds) -> MappedBackend:
    inner = DriftingBackend(OraclePointMaps(poses), yaw=math.radians(0.3), climb=0.004, scale=0.002)
    return MappedBackend(inner, MapOptions(live=bounds))


def test_a_live_stream_circling_a_room_keeps_the_map_within_its_bounds() -> None:
    # 40 keyframes hold a lap (36 keyframes: the keyframe policy takes one every 10 degrees of turn): the place the
    # camera comes back to is still held, one lap later.
    bounds = LiveBounds(keyframes=40, loop_every=4, loops=3, frames=50)
    frames, poses = _laps(live=True)
    mapped = _mapped(poses, bounds)
    found_after_eviction = 0
    for f in frames:
        evicted_before = mapped.evicted["keyframes"]
        loops_before = len(mapped.loops) + mapped.evicted["loops"]
        mapped.step(f)
        holding = [kf for kf in mapped.keyframes if not kf.evicted]
        assert len(holding) <= bounds.keyframes or mapped._training is not None
        assert len(mapped.loops) <= bounds.loops
        assert len(mapped._frames) <= bounds.frames
        # The ends of a loop not solved yet keep their features (a later solve or check may read them).
        pending = mapped.loops[len(mapped.loops) - mapped._pending_loops:]
        assert all(not mapped.keyframes[i].evicted for m in pending for i in (m.query, m.match))
        if evicted_before and len(mapped.loops) + mapped.evicted["loops"] > loops_before:
            found_after_eviction += 1
    n_kf = len(mapped.keyframes)
    assert n_kf >= bounds.keyframes + 20  # the laps made many keyframes: the bound did something
    assert mapped.evicted["keyframes"] == sum(kf.evicted for kf in mapped.keyframes) > 0
    assert mapped.evicted["frames"] == len(frames) - bounds.frames
    assert found_after_eviction >= 1  # newer keyframes of the same place still close loops
    assert mapped.stats().extra["map_evicted"] == mapped.evicted
    # An evicted keyframe is still a node with its pose, and no longer a loop candidate.
    assert len(mapped._nodes) == n_kf
    scores = mapped._index.scores(n_kf - 1)
    assert all(scores[kf.index] == -1.0 for kf in mapped.keyframes if kf.evicted)
    assert mapped.keyframes[0].evicted and mapped.keyframes[0].descriptors.size == 0
    assert mapped.keyframes[0].has_points  # the map's scene unit stays the keyframe it was measured on


def test_a_recorded_stream_is_not_bounded() -> None:
    bounds = LiveBounds(keyframes=10, loop_every=4, loops=3, frames=50)
    frames, poses = _laps(live=False)
    mapped = _mapped(poses, bounds)
    for f in frames:
        mapped.step(f)
    assert mapped.evicted == {"keyframes": 0, "loops": 0, "frames": 0}
    assert not any(kf.evicted for kf in mapped.keyframes) and len(mapped.keyframes) > bounds.keyframes
    assert len(mapped._frames) == len(frames) and len(mapped.loops) > bounds.loops


def test_a_dropped_place_scores_minus_one_and_leaves_the_others_as_if_it_never_was() -> None:
    rng = np.random.default_rng(0)
    words = [rng.integers(0, 16, size=40).astype(np.int32) for _ in range(6)]
    index = PlaceIndex()
    index.reset(16)
    for w in words:
        index.add(w)
    index.drop(2)
    without = PlaceIndex()
    without.reset(16)
    for i, w in enumerate(words):
        if i != 2:
            without.add(w)
    s = index.scores(5)
    assert s[2] == -1.0
    np.testing.assert_array_equal(np.delete(s, 2), without.scores(4))
    assert np.all(index.scores(2) == -1.0)


def test_the_consistent_loop_search_stops_at_its_budget_with_a_consistent_set() -> None:
    """Many nearly consistent loops made the exact search exponential; the budget bounds it."""
    rng = np.random.default_rng(1)
    n_kf = 60
    odometry = [Sim3(1.0, np.eye(3), np.array([0.1, 0.0, 0.0])) for _ in range(n_kf - 1)]
    P = [Sim3.identity()]
    for S in odometry:
        P.append(P[-1] @ S)
    noise = GraphNoise()
    loops = []
    for _ in range(40):
        i = int(rng.integers(0, 20))
        j = int(rng.integers(30, n_kf))
        S = P[i].inverse() @ P[j]
        loops.append((i, j, Sim3(S.s, S.R, S.t + rng.normal(0, 0.03, 3))))  # each a few sigma off
    full = consistent_loops(odometry, loops, sim3=False, unit=1.0, noise=noise)
    for budget in (1, 50):
        kept = consistent_loops(odometry, loops, sim3=False, unit=1.0, noise=noise, search_budget=budget)
        assert 1 <= len(kept) <= len(full)
        # pairwise consistent: each pair of the kept loops is a consistent pair on its own
        for a in kept:
            for b in kept:
                if a < b:
                    assert consistent_loops(odometry, [loops[a], loops[b]], sim3=False, unit=1.0,
                                            noise=noise) == [0, 1]


def test_a_live_loop_search_runs_beside_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Live: a keyframe's loop candidates are verified on a thread of their own, so the stream's steps go on
    while it runs (here it is held until keyframes are being evicted; run in the step, the held verification
    would stall the step and fail the test); its keyframes are not evicted meanwhile; what it finds is added,
    and the graph solved, at a later step."""
    import threading

    import recon.map.mapped as mapped_module

    gate = threading.Event()
    verify_threads: list[str] = []
    real_verify = mapped_module.verify_loop

    def held_verify(*args: object, **kwargs: object) -> object:
        verify_threads.append(threading.current_thread().name)
        assert gate.wait(120), "the loop verification was never released: it ran in the step"
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(mapped_module, "verify_loop", held_verify)
    bounds = LiveBounds(keyframes=40, loop_every=4, loops=3, frames=50)
    frames, poses = _laps(live=True)
    mapped = _mapped(poses, bounds)
    steps_while_held = 0
    revisions = []
    for f in frames:
        out = mapped.step(f)
        revisions += [r for r in out if r.is_update]
        search = mapped._loop_search
        if search is not None and not gate.is_set():
            steps_while_held += 1
            assert not any(mapped.keyframes[i].evicted for i in (search.query, *search.candidates))
            if mapped.evicted["keyframes"] > 0 and steps_while_held >= 5:
                gate.set()
    gate.set()
    revisions += [r for r in mapped.flush() if r.is_update]
    assert steps_while_held >= 5  # the stream stepped on while a verification was held
    assert verify_threads and set(verify_threads) == {"map-loop-search"}
    assert len(mapped.loops) >= 1 and mapped.optimisations >= 1
    assert revisions  # the solve's corrections reached the stream as revisions of emitted seqs
