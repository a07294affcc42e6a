"""Monocular initialisation never holds a result back: each frame is answered by its own step (untracked while
the map initialises) and revised with its pose (`is_update`) once the map is initialised."""

from __future__ import annotations

from pathlib import Path

from recon.backends import create_backend
from recon.datasets import open_sequence
from recon.types import Frame

SAMPLE = Path(__file__).resolve().parents[3] / "datasets" / "sample"


def _mono_frames(n: int) -> list[Frame]:
    frames = zip(open_sequence(SAMPLE), range(n), strict=False)
    return [Frame(f.stream_id, f.seq, f.t_ns, f.image, K=f.K) for f, _ in frames]


def test_initialisation_frames_are_answered_at_once_and_revised() -> None:
    backend = create_backend("geometric", mode="mono")
    first_pose: dict[int, bool] = {}  # seq -> tracked, from the step of the frame itself
    revised: dict[int, bool] = {}
    init_step = None
    for frame in _mono_frames(30):
        out = backend.step(frame)
        own = [r for r in out if r.seq == frame.seq and not r.is_update]
        assert len(own) == 1, f"frame {frame.seq}: its own step returned {len(own)} results for it"
        first_pose[frame.seq] = own[0].tracked
        for r in out:
            if r.is_update and r.seq not in revised:
                assert r.seq < frame.seq
                revised[r.seq] = r.tracked
                init_step = frame.seq if init_step is None else init_step
    assert init_step is not None and init_step > 0, "the map never initialised on 30 sample frames"
    untracked = sorted(s for s, ok in first_pose.items() if not ok)
    assert untracked == list(range(init_step)), "frames before the initialisation are untracked, later ones not"
    # Every frame answered untracked gets its pose later, as a tracked revision of the same seq.
    assert all(revised.get(s) for s in untracked)
    extra = backend.stats().extra
    assert extra["held_untracked"] == init_step and extra["guessed_poses"] == 0


def test_frames_that_never_get_a_pose_are_emitted_once() -> None:
    """No parallax (one image repeated): every frame is answered untracked by its step; flush adds nothing."""
    image = _mono_frames(1)[0]
    backend = create_backend("geometric", mode="mono")
    out = []
    for seq in range(8):
        out += backend.step(Frame(image.stream_id, seq, image.t_ns + seq * 33_000_000, image.image, K=image.K))
    out += backend.flush()
    assert [r.seq for r in out] == list(range(8))
    assert not any(r.tracked or r.is_update for r in out)
    assert backend.stats().extra["guessed_poses"] == 8  # counted when they leave the initialisation unposed
