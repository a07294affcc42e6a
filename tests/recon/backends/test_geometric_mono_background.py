"""The monocular keyframe bundle adjustment runs beside the tracking for live frames and inside the step for
recorded ones (recon.backends.geometric.background): a live keyframe step never waits for it, its result arrives
as revisions of the frames it moved, a replay stays deterministic, and the trajectory keeps the accuracy target."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from recon.backends import create_backend
from recon.backends.geometric import background
from recon.checkpoint import backend_state, restore_backend_state
from recon.datasets import open_sequence
from recon.eval.trajectory import absolute_trajectory_error, associate_timestamps, trajectory_length
from recon.types import Frame, FrameResult

SAMPLE = Path(__file__).resolve().parents[3] / "datasets" / "sample"
GATE_S = 120.0  # how long a gated adjustment waits at most (a step that waited for it would take this long)


def _frames(n: int, *, live: bool, every: int = 1) -> list[Frame]:
    frames = list(open_sequence(SAMPLE))[::every][:n]
    return [Frame(f.stream_id, i, f.t_ns, f.image, K=f.K, meta={"live": live}) for i, f in enumerate(frames)]


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Background adjustments wait for this event before solving (as on a machine too busy to run them)."""
    opened = threading.Event()
    real = background.bundle_adjust

    def gated(*args, **kwargs):
        opened.wait(GATE_S)
        return real(*args, **kwargs)

    monkeypatch.setattr(background, "bundle_adjust", gated)
    return opened


def _step_until_job(backend, frames: list[Frame]) -> tuple[list[FrameResult], int]:
    out: list[FrameResult] = []
    for i, f in enumerate(frames):
        out += backend.step(f)
        if backend._tracker._ba_job is not None:
            return out, i + 1
    raise AssertionError("no keyframe bundle adjustment was started")


def test_a_live_keyframe_step_does_not_wait_for_its_bundle_adjustment(gate: threading.Event) -> None:
    backend = create_backend("geometric", mode="mono")
    frames = _frames(40, live=True, every=2)
    out, n = _step_until_job(backend, frames)
    job = backend._tracker._ba_job
    during = frames[n:n + 6]
    for f in during:
        step = backend.step(f)
        own = [r for r in step if r.seq == f.seq and not r.is_update]
        assert len(own) == 1 and own[0].tracked, f"frame {f.seq} is answered, posed, by its own step"
        out += step
    assert not job.done and not gate.is_set(), "the steps ran while the adjustment was still waiting"
    assert backend.stats().extra["background_adjustments"] == 0

    gate.set()
    assert job.wait(GATE_S)
    T_adjusted = job.T.copy()
    out += backend.step(frames[n + len(during)])
    tracker = backend._tracker
    assert backend.stats().extra["background_adjustments"] >= 1
    np.testing.assert_allclose(job.kfs[-1].T_cw, T_adjusted[-1], atol=0)  # the adjusted keyframe took its pose
    # Every emitted frame's latest pose (its result or its last revision) follows its keyframe's adjusted pose,
    # within the revision threshold of MonoVO._revise_attached (1e-3 of the scene depth, 0.05 degrees).
    latest = {r.seq: r.T_world_cam for r in out}
    depth = tracker._median_depth()
    for result, kf, T_kf_frame in tracker._attached:
        delta = (np.linalg.inv(kf.T_cw) @ T_kf_frame) @ np.linalg.inv(latest[result.seq])
        assert np.linalg.norm(delta[:3, 3]) < 1e-3 * depth + 1e-9
        assert np.degrees(np.arccos(np.clip((np.trace(delta[:3, :3]) - 1) / 2, -1, 1))) < 0.05 + 1e-6


def test_recorded_frames_are_adjusted_in_the_step_and_replay_identically() -> None:
    frames = _frames(30, live=False, every=2)
    runs = []
    for option in ("live", "never"):
        backend = create_backend("geometric", mode="mono", mono={"background_ba": option})
        out = [r for f in frames for r in backend.step(f)] + backend.flush()
        assert backend.stats().extra["background_adjustments"] == 0
        runs.append(out)
    assert [(r.seq, r.is_update) for r in runs[0]] == [(r.seq, r.is_update) for r in runs[1]]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)


def test_a_checkpoint_does_not_wait_for_the_running_adjustment_and_a_restored_backend_adjusts_again(
        gate: threading.Event) -> None:
    """Waiting held the session's next frame for the rest of the solve; the snapshot leaves the running job out
    and marks the window, which the restored tracker adjusts at its next keyframe."""
    frames = _frames(40, live=True, every=2)
    first = create_backend("geometric", mode="mono")
    head, n = _step_until_job(first, frames)
    saved: list = []
    saver = threading.Thread(target=lambda: saved.append(backend_state(first)))
    saver.start()
    saver.join(GATE_S)
    assert saved and not gate.is_set(), "the checkpoint was written while the adjustment still waited"
    gate.set()
    restored = create_backend("geometric", mode="mono")
    restore_backend_state(restored, saved[0])
    assert restored._tracker._ba_job is None and restored._tracker._ba_wanted
    rest = frames[n:]
    a = {r.seq: r.T_world_cam for r in [r for f in rest for r in first.step(f)] + first.flush() if r.tracked}
    b = {r.seq: r.T_world_cam for r in [r for f in rest for r in restored.step(f)] + restored.flush() if r.tracked}
    assert restored.stats().extra["background_adjustments"] >= 1, restored.stats().extra  # adjusted again
    # Every frame after the checkpoint has a tracked pose from both (earlier frames may come back as revisions).
    seqs = [f.seq for f in rest]
    assert [s for s in seqs if s in a] == [s for s in seqs if s in b] == seqs, (sorted(a), sorted(b))
    # Same map, same frames, the window adjusted at another step: the two tracks stay together. The bound is the
    # accuracy target (2 % of the path, test_live_trajectory_keeps_the_accuracy_target) over the path so far.
    centres_a = np.stack([a[s][:3, 3] for s in seqs])
    centres_b = np.stack([b[s][:3, 3] for s in seqs])
    so_far = {r.seq: r.T_world_cam[:3, 3] for r in head if r.tracked}
    so_far.update({s: a[s][:3, 3] for s in seqs})
    track = np.stack([so_far[s] for s in sorted(so_far)])
    path = float(np.sum(np.linalg.norm(np.diff(track, axis=0), axis=1)))
    assert float(np.max(np.linalg.norm(centres_a - centres_b, axis=1))) <= 0.02 * path


def test_a_finished_adjustment_is_checkpointed_and_applied_alike_by_the_restored_backend(
        gate: threading.Event) -> None:
    """A job that finished but was not applied yet is plain data: the snapshot keeps it, and the restored tracker
    applies it at its next step exactly as the original does (the same keyframe poses and results, bit for
    bit)."""
    frames = _frames(40, live=True, every=2)
    first = create_backend("geometric", mode="mono")
    _, n = _step_until_job(first, frames)
    job = first._tracker._ba_job
    gate.set()
    assert job.wait(GATE_S) and job.error is None and job.T is not None
    gate.clear()  # later adjustments wait again, so the step compared below cannot race one
    saved = backend_state(first)
    restored = create_backend("geometric", mode="mono")
    restore_backend_state(restored, saved)
    kept = restored._tracker._ba_job
    assert kept is not None and kept.done and kept.thread is None
    np.testing.assert_array_equal(kept.T, job.T)
    a, b = first.step(frames[n]), restored.step(frames[n])
    gate.set()
    for backend in (first, restored):
        extra = backend.stats().extra
        assert extra["background_adjustments"] == 1 and extra["background_discarded"] == 0, extra
    assert [(r.seq, r.is_update) for r in a] == [(r.seq, r.is_update) for r in b]
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ra.T_world_cam, rb.T_world_cam)
    # Both took the adjusted poses (the restored tracker's keyframes are its own copies of the window).
    np.testing.assert_array_equal(job.kfs[-1].T_cw, job.T[-1])
    np.testing.assert_array_equal(kept.kfs[-1].T_cw, job.T[-1])
    assert not np.array_equal(job.T[-1], job.T_before[-1])  # the adjustment moved the newest keyframe
    for ka, kb in zip(first._tracker._kfs, restored._tracker._kfs, strict=True):
        np.testing.assert_array_equal(ka.T_cw, kb.T_cw)


def test_live_trajectory_keeps_the_accuracy_target() -> None:
    """The sample as a live stream (adjustments in the background): Sim(3) ATE within the issue's 2 % of the
    path, as for a replay (tests/recon/backends/test_geometric_synthetic.py)."""
    sequence = open_sequence(SAMPLE)
    frames = [Frame(f.stream_id, f.seq, f.t_ns, f.image, K=f.K, meta={"live": True}) for f in sequence]
    backend = create_backend("geometric", mode="mono")
    poses: dict[int, tuple[int, np.ndarray]] = {}
    for frame in frames:
        for r in backend.step(frame):
            if r.tracked:
                poses[r.seq] = (r.t_ns, r.T_world_cam)  # revisions replace earlier poses
    for r in backend.flush():
        if r.tracked:
            poses[r.seq] = (r.t_ns, r.T_world_cam)
    extra = backend.stats().extra
    assert extra["background_adjustments"] >= 1 and extra["tracking_losses"] == 0
    assert sorted(poses) == [f.seq for f in frames]
    seqs = sorted(poses)
    t_ns = np.array([poses[s][0] for s in seqs], dtype=np.int64)
    est = np.stack([poses[s][1] for s in seqs])
    gt = sequence.ground_truth
    assoc = associate_timestamps(t_ns, gt.t_ns)
    ref = gt.T_world_cam[assoc.idx_gt]
    ate = absolute_trajectory_error(est[assoc.idx_pred], ref, "sim3")
    assert 100.0 * ate.rmse / trajectory_length(ref) <= 2.0


def test_pruned_map_points_change_nothing_and_keep_the_map_bounded() -> None:
    """Points no track, window keyframe or relocalisation keyframe refers to are forgotten: the results are the
    same as with nothing pruned (nothing could read them again), and the map holds fewer points."""
    frames = _frames(40, live=False)
    # Small windows and frequent keyframes, so keyframes leave the window and the relocalisation store early.
    options = {"reloc": {"max_keyframes": 2}, "ba_window": 3, "max_kf_gap": 2}
    runs, trackers = [], []
    for prune_every in (2, 10**9):
        backend = create_backend("geometric", mode="mono", mono={"prune_every": prune_every, **options})
        runs.append([r for f in frames for r in backend.step(f)] + backend.flush())
        trackers.append(backend._tracker)
    pruned, kept = trackers
    assert pruned.points_pruned > 0 and kept.points_pruned == 0
    assert len(pruned.points) < len(kept.points)
    assert [(r.seq, r.is_update) for r in runs[0]] == [(r.seq, r.is_update) for r in runs[1]]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a.T_world_cam, b.T_world_cam)
        np.testing.assert_array_equal(a.depth, b.depth)
