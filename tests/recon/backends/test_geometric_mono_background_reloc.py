"""A lost live frame is relocalised beside the tracking (recon.backends.geometric.background.RelocaliseJob): its
own step answers it at once with its guessed pose, the tracker does not give the map up while the job runs, a
found pose arrives as an `is_update` revision of that frame, the frames lost meanwhile are tracked again from it
(revised too) and tracking continues from an adjusted keyframe; a checkpoint leaves a running job out. Recorded
frames relocalise inside the step, as before.

The footage is a synthetic walk with a jump of 10 frames (a stretch the camera never delivered): KLT from the
last frame before the jump fails, the descriptors still match the map's keyframes.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from recon.backends import create_backend
from recon.backends.geometric import background, reloc
from recon.checkpoint import backend_state, restore_backend_state
from recon.types import Frame, FrameResult
from tests.recon.backends._trajectory import ate_percent
from tests.recon.backends.test_geometric_mono_calib_reloc import _render

GATE_S = 120.0  # how long a gated relocalisation waits at most (a step that waited for it would take this long)
JUMP_AT, JUMP = 30, 10  # seq of the first frame after the jump, frames skipped


@pytest.fixture(scope="module")
def footage() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Images in stream order (the jump applied), their ground-truth poses and the intrinsics."""
    images, gt, K = _render("walk", 0, 90, 15.0, 0.8, 240, 180)
    order = list(range(JUMP_AT)) + list(range(JUMP_AT + JUMP, len(images)))
    return [images[i] for i in order], gt[order], K


def _frames(footage, *, live: bool) -> list[Frame]:
    images, _, K = footage
    return [Frame("cam", s, s * 33_333_333, image, K=K, meta={"live": live}) for s, image in enumerate(images)]


def _hold(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> threading.Event:
    """`owner.name` waits for the returned event before it runs (as on a machine too busy to run it)."""
    opened = threading.Event()
    real = getattr(owner, name)

    def held(*args, **kwargs):
        opened.wait(GATE_S)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, held)
    return opened


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Relocalisations wait for this event before matching."""
    return _hold(monkeypatch, reloc.DescriptorDatabase, "relocalise")


def _step(backend, frame: Frame) -> list[FrameResult]:
    """One step, then wait for a background adjustment it started: the adjustments keep up, as they do at a
    camera's rate on an idle machine, so the trajectory does not depend on how busy the test machine is."""
    out = backend.step(frame)
    job = backend._tracker._ba_job
    if job is not None:
        assert job.wait(GATE_S)
    return out


def _step_to_the_jump(backend, frames: list[Frame]) -> list[FrameResult]:
    out = [r for f in frames[:JUMP_AT] for r in _step(backend, f)]
    assert backend._tracker._reloc_job is None and backend.stats().extra["tracking_losses"] == 0
    return out


def test_a_lost_live_frame_is_answered_at_once_and_revised_when_relocalised(footage, gate: threading.Event) -> None:
    frames = _frames(footage, live=True)
    backend = create_backend("geometric", mode="mono")
    out = _step_to_the_jump(backend, frames)
    tracker = backend._tracker  # made at the first frame
    step = _step(backend, frames[JUMP_AT])
    own = [r for r in step if r.seq == JUMP_AT]
    assert len(own) == 1 and not own[0].tracked and not own[0].is_update  # answered now, with its guess
    job = tracker._reloc_job
    assert job is not None and job.frame.seq == JUMP_AT and not job.thread.done
    out += step
    # The frames after it are answered by their own steps too; no second job, and the map is kept (no
    # re-initialisation) past max_lost_frames while the job may still find a pose in it.
    during = frames[JUMP_AT + 1:JUMP_AT + 2 + tracker.max_lost_frames]
    for f in during:
        step = _step(backend, f)
        assert len([r for r in step if r.seq == f.seq and not r.is_update]) == 1
        out += step
    assert tracker._reloc_job is job and not gate.is_set()
    assert tracker.lost_in_row > tracker.max_lost_frames and tracker.reinitialisations == 0

    gate.set()
    assert job.thread.wait(GATE_S) and job.thread.error is None and job.thread.result is not None
    nxt = frames[JUMP_AT + 1 + len(during)]
    step = _step(backend, nxt)
    revised = [r for r in step if r.seq == JUMP_AT]
    assert len(revised) == 1 and revised[0].is_update and revised[0].tracked
    extra = backend.stats().extra
    assert extra["background_relocalisations"] == 1 and extra["reinitialisations"] == 0
    out += step
    for f in frames[JUMP_AT + 2 + len(during):]:
        out += _step(backend, f)
    out += backend.flush()
    latest = {r.seq: r for r in out}  # revisions replace earlier results
    assert sorted(latest) == [f.seq for f in frames]
    # Tracking continued from the relocalised frame in the same map, first through the frames lost while the
    # job ran (revised, tracked), so every frame has a tracked pose in the end, and one Sim(3) fits the whole
    # run within the 2 % of the path.
    assert all(latest[f.seq].is_update for f in during)
    assert all(r.tracked for r in latest.values())
    assert ate_percent(latest, footage[1]) <= 2.0


def test_recorded_frames_relocalise_in_the_step(footage) -> None:
    frames = _frames(footage, live=False)
    backend = create_backend("geometric", mode="mono")
    _step_to_the_jump(backend, frames)
    step = backend.step(frames[JUMP_AT])
    assert [(r.seq, r.tracked, r.is_update) for r in step if r.seq == JUMP_AT] == [(JUMP_AT, True, False)]
    extra = backend.stats().extra
    assert backend._tracker._reloc_job is None
    assert extra["relocalisations"] == 1 and extra["background_relocalisations"] == 0


def test_a_checkpoint_leaves_a_running_relocalisation_out_and_the_restored_tracker_tries_again(
        footage, gate: threading.Event) -> None:
    frames = _frames(footage, live=True)
    first = create_backend("geometric", mode="mono")
    _step_to_the_jump(first, frames)
    first.step(frames[JUMP_AT])
    assert first._tracker._reloc_job is not None
    saved: list = []
    saver = threading.Thread(target=lambda: saved.append(backend_state(first)))
    saver.start()
    saver.join(GATE_S)
    assert saved and not gate.is_set(), "the checkpoint was written while the relocalisation still waited"
    gate.set()
    restored = create_backend("geometric", mode="mono")
    restore_backend_state(restored, saved[0])
    tracker = restored._tracker
    assert tracker._reloc_job is None and tracker.lost_in_row == 1
    # Its next frame is lost too (KLT from the frame before the jump) and starts a job of its own, which finds
    # the pose; the step after takes it up.
    out = restored.step(frames[JUMP_AT + 1])
    job = tracker._reloc_job
    assert job is not None and job.frame.seq == JUMP_AT + 1
    assert job.thread.wait(GATE_S)
    out += restored.step(frames[JUMP_AT + 2])
    assert [(r.seq, r.tracked) for r in out if r.is_update and r.seq == JUMP_AT + 1] == [(JUMP_AT + 1, True)]
    assert restored.stats().extra["background_relocalisations"] == 1


def test_the_relocalised_keyframe_is_adjusted_in_the_step(footage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its pose rests on one frame's matches; tracking on from it while its adjustment ran in the background
    drifted in scale. Background adjustments are held back for the 10 frames after the relocalisation (a busy
    machine): the run keeps the 2 % target (measured 1.1 %; 10.8 % when the relocalised keyframe was adjusted
    in the background like the others)."""
    frames = _frames(footage, live=True)
    backend = create_backend("geometric", mode="mono")
    out = _step_to_the_jump(backend, frames)
    held = _hold(monkeypatch, background, "bundle_adjust")
    held.set()
    out += _step(backend, frames[JUMP_AT])
    job = backend._tracker._reloc_job
    assert job is not None and job.thread.wait(GATE_S) and job.thread.result is not None
    held.clear()
    for f in frames[JUMP_AT + 1:JUMP_AT + 11]:
        out += backend.step(f)
    assert backend.stats().extra["background_relocalisations"] == 1
    held.set()
    for f in frames[JUMP_AT + 11:]:
        out += _step(backend, f)
    out += backend.flush()
    latest = {r.seq: r for r in out}
    assert sorted(latest) == [f.seq for f in frames] and all(r.tracked for r in latest.values())
    assert ate_percent(latest, footage[1]) <= 2.0
