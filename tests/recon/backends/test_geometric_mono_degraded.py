"""Monocular geometric backend on degraded synthetic footage, with the issue's thresholds (issue 13 goals).

Realistic renders (`Degradations.realistic()`: motion blur, exposure and white-balance drift, sensor noise,
JPEG), 120 frames at 320x240, with a focal length other than the backend's 0.8 x width starting guess: a lap
round the room at the hand-held speed and a walk at 3x that speed. Thresholds are the issue's: frames with a
tracked pose >= 95 % on fast motion, focal within 5 %, Sim(3) ATE <= 2 % of the path with unknown K and
<= 1.5 % with K.

These two sequences are regression guards, not a success rate: over twelve such renders (walks, loops, a
forward and an orbit path, focal 0.65-1.3 x width, 1-3x speed) every frame was tracked, but the focal ended
within 5 % on eight of twelve, and on some the ATE moved several-fold with the BLAS kernels' rounding
(docs/benchmarks.md, "Monocular geometric", degraded footage). Both were checked under the default,
OPENBLAS_CORETYPE=Haswell and SkylakeX kernels; the 3x walk's focal ends 18-37 % off, so it is asserted for
tracking and for known-K accuracy only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from recon.backends import create_backend
from recon.datasets import open_sequence
from tests.recon.backends._trajectory import ate_percent

WIDTH, HEIGHT, FRAMES = 320, 240, 120


def _render(root: Path, trajectory: str, seed: int, speed: float, focal_ratio: float) -> Path:
    from recon.datasets.degrade import Degradations
    from recon.datasets.synthetic import generate_sequence

    return generate_sequence(root / f"{trajectory}{seed}", seed=seed, trajectory=trajectory, num_frames=FRAMES,
                             width=WIDTH, height=HEIGHT, supersample=1, focal=focal_ratio * WIDTH,
                             degradations=Degradations.realistic(speed=speed))


@pytest.fixture(scope="module")
def room_lap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hand-held speed, the 7-Scenes Kinect's field of view (f = 0.914 x width, 14 % above the guess)."""
    return _render(tmp_path_factory.mktemp("mono_degraded"), "loop", seed=0, speed=1.0, focal_ratio=0.914)


@pytest.fixture(scope="module")
def fast_walk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3x the hand-held speed (about 6 cm and 2 degrees per frame), a narrow lens (f = 1.2 x width)."""
    return _render(tmp_path_factory.mktemp("mono_degraded"), "walk", seed=2, speed=3.0, focal_ratio=1.2)


def _run(path: Path, *, known_k: bool) -> tuple[float, float, float, dict]:
    """(Sim(3) ATE % of the path over the tracked frames, tracked fraction, the true focal, the backend's
    intrinsics)."""
    sequence = open_sequence(path)
    backend = create_backend("geometric", mode="mono")
    results, true_f = {}, 0.0
    for frame in sequence:
        true_f = float(frame.K[0, 0])
        mono_frame = dataclasses.replace(frame, depth=None, K=frame.K if known_k else None)
        for r in backend.step(mono_frame):
            results[r.seq] = r
    for r in backend.flush():
        results[r.seq] = r
    gt = sequence.ground_truth.T_world_cam
    assert sorted(results) == list(range(len(gt)))  # every frame gets a result, tracked or not
    tracked = sum(r.tracked for r in results.values()) / len(gt)
    return ate_percent(results, gt), tracked, true_f, backend.stats().extra["intrinsics"]


def test_unknown_focal_is_self_calibrated_on_degraded_footage(room_lap: Path) -> None:
    ate, tracked, true_f, intrinsics = _run(room_lap, known_k=False)
    assert intrinsics["source"].startswith("self-calibrated")
    assert abs(intrinsics["fx"] / true_f - 1) <= 0.05, (intrinsics["fx"], true_f)
    assert tracked >= 0.95
    assert ate <= 2.0, ate


def test_known_focal_tracks_degraded_footage_within_the_goal(room_lap: Path) -> None:
    ate, tracked, _, intrinsics = _run(room_lap, known_k=True)
    assert intrinsics["source"] == "given"
    assert tracked >= 0.95
    assert ate <= 1.5, ate


def test_fast_motion_keeps_a_tracked_pose(fast_walk: Path) -> None:
    """Fast motion: >= 95 % of the frames get a tracked pose (no guessed ones) with unknown K; with K the path is
    also within the accuracy goal."""
    _, tracked, _, _ = _run(fast_walk, known_k=False)
    assert tracked >= 0.95, tracked
    ate, tracked_k, _, _ = _run(fast_walk, known_k=True)
    assert tracked_k >= 0.95
    assert ate <= 1.5, ate
