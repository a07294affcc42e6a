"""Loop closure end to end on a rendered closed loop: the map layer finds the revisit, optimises the pose graph
and re-emits corrected poses, and the sinks end with the corrected trajectory.

Thresholds are the issue's goals for `lingbot_loop` (issue 13): after closure the end pose lies within 2 % of
the path length of the start pose and the vertical drift stays below 2 % of the path. The drift the backends
are given (`DriftingBackend`) is several times larger than that, so an open loop fails both checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from recon.backends import create_backend
from recon.geometry import Sim3, rotation_angle
from recon.map import MapOptions, MappedBackend, OdometryRecorder, loop_figures
from recon.map.keyframes import KeyframePolicy
from recon.sinks.trajectory import TrajectoryWriter
from recon.types import Frame, FrameResult
from tests.recon.map._loop import DriftingBackend, OraclePointMaps, loop_frames

pytestmark = pytest.mark.timeout(300)
N_LOOP = 72  # frame N_LOOP is back at the first pose


def _run(backend, frames: list[Frame]) -> tuple[list[FrameResult], dict[int, np.ndarray]]:
    out: list[FrameResult] = []
    for f in frames:
        out += backend.step(f)
    out += backend.flush()
    final = {}
    for r in out:
        final[r.seq] = r.T_world_cam
    return out, final


def _figures(poses: dict[int, np.ndarray]) -> dict[str, float]:
    return loop_figures(np.stack([poses[s] for s in range(N_LOOP + 1)]))


def test_rgbd_loop_closes_and_the_trajectory_sink_keeps_the_corrected_poses() -> None:
    frames, _ = loop_frames(depth=True)
    tap = OdometryRecorder(DriftingBackend(create_backend("geometric")))
    mapped = MappedBackend(tap)
    out, final = _run(mapped, frames)
    raw = tap.poses
    before = _figures(raw)
    assert before["return_error"] > 0.02 and before["vertical_drift"] > 0.02  # an open loop fails both goals
    after = _figures(final)
    assert mapped.stats().extra["map_mode"] == "se3"
    assert len(mapped.loops) >= 1 and mapped.optimisations >= 1
    assert after["return_error"] < 0.02, (before, after)
    assert after["vertical_drift"] < 0.02, (before, after)
    updates = [r for r in out if r.is_update]
    assert updates and all(r.points_world is None for r in updates)
    assert {r.seq for r in updates} <= {r.seq for r in out if not r.is_update}

    sink = TrajectoryWriter("unused.tum")
    for r in out:
        sink.on_result(r)
    traj = sink.trajectory()
    assert len(traj) == len(frames)
    np.testing.assert_allclose(traj.T_world_cam, np.stack([final[s] for s in range(len(frames))]))
    # The newest correction is the map <- odom transform: it maps the backend's newest pose to the emitted one.
    np.testing.assert_allclose(mapped.T_map_odom[:3, :3] @ raw[len(frames) - 1][:3, :3],
                               final[len(frames) - 1][:3, :3], atol=1e-6)


def test_up_to_scale_point_maps_close_the_loop_with_sim3() -> None:
    """What the learned backends emit (point maps in their own unit, scale drifting from chunk to chunk)."""
    frames, gt = loop_frames(depth=True)
    drifting = DriftingBackend(OraclePointMaps(gt), yaw=math.radians(0.3), climb=0.004, scale=0.004)
    backend_out: dict[int, FrameResult] = {}
    backend_step = drifting.step

    def recording_step(frame: Frame) -> list[FrameResult]:
        results = backend_step(frame)
        backend_out.update({r.seq: r for r in results if not r.is_update})
        return results

    drifting.step = recording_step
    tap = OdometryRecorder(drifting)
    mapped = MappedBackend(tap)
    out, final = _run(mapped, frames)
    # A corrected point map moves with its pose: in the camera's frame it is the backend's map times one scale.
    moved = 0
    for r in out:
        if r.is_update or r.points_world is None:
            continue
        src = backend_out[r.seq]
        assert r.points_world.dtype == src.points_world.dtype == np.float32
        cam_out = (r.points_world.reshape(-1, 3) - r.T_world_cam[:3, 3]) @ r.T_world_cam[:3, :3]
        cam_in = (src.points_world.reshape(-1, 3) - src.T_world_cam[:3, 3]) @ src.T_world_cam[:3, :3]
        if np.allclose(r.T_world_cam, src.T_world_cam):
            continue
        moved += 1
        scale = np.linalg.norm(cam_out, axis=1).sum() / np.linalg.norm(cam_in, axis=1).sum()
        np.testing.assert_allclose(cam_out, scale * cam_in, atol=1e-4 * np.abs(cam_in).max())
    assert moved > 0
    before = _figures(tap.poses)
    assert before["return_error"] > 0.06 and before["vertical_drift"] > 0.03
    after = _figures(final)
    assert mapped.stats().extra["map_mode"] == "sim3"
    loop = mapped.loops[0]
    assert len(mapped.loops) >= 1
    # The loop measures the accumulated scale drift between the two keyframes: (1.004)^(seq gap).
    gap = mapped.keyframes[loop.query].seq - mapped.keyframes[loop.match].seq
    assert loop.S_match_query.s == pytest.approx(1.004 ** -gap, rel=0.02)
    assert after["return_error"] < 0.02, (before, after)
    assert after["vertical_drift"] < 0.02, (before, after)
    assert any(r.is_update for r in out)
    # Every frame ends where the final graph puts it: its keyframe's correction applied to its odometry pose,
    # up to the tolerance below which a past frame is not re-emitted (computed here one frame at a time).
    tol = mapped.options.update_tolerance * mapped._unit
    for seq, rec in mapped._frames.items():
        if rec.keyframe < 0:  # before the first keyframe: never corrected
            continue
        want = mapped._nodes[rec.keyframe] @ Sim3.from_se3(mapped.keyframes[rec.keyframe].T_odom_cam).inverse()
        T_want = want.apply_poses(tap.poses[seq])
        assert np.linalg.norm(final[seq][:3, 3] - T_want[:3, 3]) <= tol * (1 + 1e-9), seq
        assert np.degrees(rotation_angle(final[seq][:3, :3].T @ T_want[:3, :3])) <= 0.1 + 1e-9, seq


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_geometric_mono_finds_the_loop_and_reduces_the_return_error() -> None:
    """The real monocular tracker on the same loop; its own map distortion limits what closure can do."""
    frames, _ = loop_frames(depth=False)
    # The rendered K is the backend's starting guess; the focal self-calibration (issue 13a) is off so this test
    # measures loop closure alone (at 160x120 it ends 7 % off the true focal and the loop is then not verified).
    inner = create_backend("geometric", mono={"calibrate_focal": False})
    mapped = MappedBackend(DriftingBackend(inner, yaw=0.0, climb=0.0))
    out, final = _run(mapped, frames)
    assert mapped.stats().extra["map_mode"] == "sim3"
    assert len(mapped.loops) >= 1 and any(r.is_update for r in out)
    after = loop_figures(np.stack([final[s] for s in range(6, N_LOOP + 7)]))
    assert after["return_error"] < 0.10, after


def test_a_tiny_learned_backend_runs_through_the_map_layer() -> None:
    """The learned backends' results (point maps, up to scale, late emission) pass through the map layer."""
    frames, _ = loop_frames(depth=False)
    frames = frames[:10]
    backend = create_backend("horizonstream", model_config="tiny", device="cpu", sliding_size=1, loop_closure=True)
    assert isinstance(backend, MappedBackend)
    inner_out, _ = _run(create_backend("horizonstream", model_config="tiny", device="cpu", sliding_size=1), frames)
    out, _ = _run(backend, frames)
    assert [r.seq for r in out if not r.is_update] == [r.seq for r in inner_out if not r.is_update]
    assert backend.stats().extra["map_mode"] == ("se3" if inner_out[0].metric else "sim3")
    # No loop in ten frames: the map frame is the odometry frame and the results are the backend's own.
    assert not backend.loops
    for a, b in zip(out, inner_out, strict=True):
        np.testing.assert_allclose(a.T_world_cam, b.T_world_cam, atol=1e-5)


def test_map_options_are_checked() -> None:
    with pytest.raises(Exception, match="unknown"):
        MapOptions.from_dict({"wordz": 3})
    with pytest.raises(Exception, match="loop_closure is off"):
        create_backend("geometric", map={"words": 64})
    opts = MapOptions.from_dict({"words": 64, "keyframe": {"max_gap": 5}})
    assert opts.words == 64 and opts.keyframe.max_gap == 5


def test_vocabulary_training_is_spread_over_the_steps_and_the_loop_still_closes(monkeypatch) -> None:
    """No step does more Hamming comparisons (counted in the real distance function, not by the code being
    tested) than twice the training budget plus the new keyframe's own words (features x words, the cost of any
    bag of words), yet every (re-)training completes and the loop is found."""
    import recon.map.vocabulary as vocabulary

    work = [0]
    real = vocabulary.hamming_to

    def counted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        work[0] += len(a) * len(b)
        return real(a, b)

    monkeypatch.setattr(vocabulary, "hamming_to", counted)
    budget = MapOptions().vocabulary_budget
    frames, gt = loop_frames(depth=True)
    mapped = MappedBackend(OdometryRecorder(DriftingBackend(OraclePointMaps(gt))),
                           MapOptions(vocabulary_after=4))
    per_step, trained = [], set()
    for f in frames:
        work[0] = 0
        mapped.step(f)
        per_step.append(work[0])
        trained.add(mapped._trained_at)
    total = sum(per_step)
    o = mapped.options
    assert max(per_step) <= 2 * budget + o.features * o.words, max(per_step)
    assert total > 8 * budget  # the trainings needed many steps' budgets: one step would have stalled
    # Each training completes some steps after its start (keyframes arrive meanwhile), then the next doubling
    # starts one: 4 keyframes, then about 8, 16 and 32 of the 40.
    assert len(trained - {0}) >= 4 and min(trained - {0}) == 4 and max(trained) >= 24, trained
    assert len(mapped.loops) >= 1


class _Revising:
    """Emits each frame, then a revision of the previous frame with its pose moved (a bundle adjustment)."""

    name = "revising"

    def __init__(self, inner) -> None:
        self.inner, self._last = inner, None

    def reset(self) -> None:
        self.inner.reset()

    def step(self, frame: Frame) -> list[FrameResult]:
        from dataclasses import replace

        out = self.inner.step(frame)
        if self._last is not None:
            T = self._last.T_world_cam.copy()
            T[:3, 3] += np.array([0.01, -0.02, 0.015])
            out.insert(0, replace(self._last, T_world_cam=T, is_update=True))
        self._last = out[-1]
        return out

    def flush(self) -> list[FrameResult]:
        return []

    def stats(self):
        return self.inner.stats()


def test_revised_keyframes_without_loops_leave_the_backend_poses_unchanged() -> None:
    """With no loop closed the map frame is the odometry frame, even when the backend revises its keyframes'
    poses: the revision moves the keyframe's node with it (it used to leak into the following frames as a
    correction of 1-2 cm per revision)."""
    frames, gt = loop_frames(depth=True)
    frames = frames[:24]
    inner_final = _run(_Revising(OraclePointMaps(gt)), frames)[1]
    mapped = MappedBackend(_Revising(OraclePointMaps(gt)), MapOptions(keyframe=KeyframePolicy(max_gap=2)))
    out, final = _run(mapped, frames)
    assert not mapped.loops and len(mapped.keyframes) >= 10
    for seq, T in inner_final.items():
        np.testing.assert_allclose(final[seq], T, atol=1e-9)
