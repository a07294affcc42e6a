"""The node's batch scheduler (recon.nodes.scheduler) and the backends' batched steps (recon.backends.batching).

Decision rules on a fake clock; then real tiny InfiniteVGGT and HorizonStream backends on one shared model,
stepped from one thread per stream through the scheduler, against the same streams stepped alone. Tolerance: as
tests/recon/models/test_batched_step.py (float32 summation order only), on poses and depth.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from recon.backends import create_backend
from recon.backends.batching import step_many
from recon.errors import BackendError
from recon.nodes.scheduler import BatchScheduler, SchedulerConfig, SchedulerStoppedError, SharedBackends
from recon.types import Frame
from tests.recon.backends._synthetic import frames as synthetic_frames


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Fake:
    """A Batchable stand-in that records how it was stepped (for the decision rules only)."""

    name = "fake"
    calls: list[int] = []

    def batch_key(self):
        return "fake"

    @classmethod
    def step_batch(cls, backends, frames):
        cls.calls.append(len(backends))
        return [[] for _ in backends]

    def step(self, frame):
        type(self).calls.append(1)
        return []


def _frame(seq: int = 0, w: int = 8) -> Frame:
    return Frame("s", seq, seq, np.zeros((8, w, 3), np.uint8))


def test_a_group_goes_when_everyone_is_pending_or_the_window_ends() -> None:
    clock = _Clock()
    sched = BatchScheduler(SchedulerConfig(window_ms=20), clock=clock)
    a, b, c = _Fake(), _Fake(), _Fake()
    for sid, be in (("a", a), ("b", b), ("c", c)):  # all three seen: each is waited for
        sched.submit(sid, be, _frame())
    go, _ = sched.due(clock())
    assert [len(g) for g in go] == [3]
    sched._pending.clear()
    sched.submit("a", a, _frame(1))
    clock.t += 0.005
    sched.submit("b", b, _frame(1))
    go, wake = sched.due(clock())
    assert go == [] and wake == pytest.approx(100.020)  # c is slow: a waits until its window ends, no longer
    clock.t = 100.0201
    go, _ = sched.due(clock())
    assert [sorted(r.stream_id for r in g) for g in go] == [["a", "b"]]
    assert sched.stats.window_triggers == 1


def test_a_deadline_sends_the_batch_early() -> None:
    clock = _Clock()
    sched = BatchScheduler(SchedulerConfig(window_ms=50), clock=clock)
    a, b = _Fake(), _Fake()
    sched.submit("b", b, _frame())
    sched._pending.clear()
    sched._step_s["fake", 8, 8] = 0.004  # this group's steps take 4 ms
    sched.submit("a", a, _frame(1), deadline_ms=10)
    clock.t += 0.005
    assert sched.due(clock())[0] == []  # 5 ms left, 4 needed: still waits for b
    clock.t += 0.0011
    go, _ = sched.due(clock())
    assert [len(g) for g in go] == [1] and sched.stats.deadline_triggers == 1


def test_stop_fails_pending_frames_loudly() -> None:
    sched = BatchScheduler(SchedulerConfig(window_ms=10_000))
    sched.submit("a", _Fake(), _frame())
    req = sched.submit("b", _Fake(), _frame())
    sched.stop()
    assert req.done.is_set() and isinstance(req.outcome, SchedulerStoppedError)
    with pytest.raises(SchedulerStoppedError):
        sched.submit("c", _Fake(), _frame())


INFINITE = {"model_config": "tiny", "image_width": 56, "device": "cpu", "budget": 4 * 2 * 17, "camera_window": 1}
HORIZON = {"model_config": "tiny", "device": "cpu", "sliding_size": 1}


def _run_streams(step, backends, streams) -> dict[str, list]:
    """One thread per stream calling `step(stream_id, backend, frame)` for each of its frames."""
    out: dict[str, list] = {sid: [] for sid in streams}
    errors: list[BaseException] = []

    def feed(sid: str) -> None:
        try:
            for f in streams[sid]:
                out[sid] += step(sid, backends[sid], f)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=feed, args=(sid,)) for sid in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    return out


@pytest.mark.parametrize("name,options,n", [("infinitevggt", INFINITE, 4), ("horizonstream", HORIZON, 6)])
def test_scheduled_streams_on_one_model_equal_streams_alone(name: str, options: dict, n: int) -> None:
    shared = SharedBackends(create_backend)
    ids = ["cam0", "cam1", "cam2"]
    streams = {sid: [Frame(sid, f.seq, f.t_ns, f.image) for f in synthetic_frames(n, h=42, w=56, seed=i)]
               for i, sid in enumerate(ids)}
    batched = {sid: shared(name, **options) for sid in ids}
    models = {id(b.model) for b in batched.values()}
    assert len(models) == 1  # one model for every stream
    alone = {sid: shared(name, **options) for sid in ids}
    sched = BatchScheduler(SchedulerConfig(window_ms=2000)).start()
    try:
        got = _run_streams(sched.step, batched, streams)
    finally:
        sched.stop()
    ref = _run_streams(lambda sid, b, f: b.step(f), alone, streams)
    assert sched.stats.largest_batch == 3 and sched.stats.calls < sched.stats.frames
    for sid in ids:
        assert [r.seq for r in got[sid]] == [r.seq for r in ref[sid]] and got[sid]
        for a, b in zip(got[sid], ref[sid], strict=True):
            np.testing.assert_allclose(a.T_world_cam, b.T_world_cam, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(a.depth, b.depth, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b.depth).max())))


def test_a_refused_frame_fails_only_its_own_stream() -> None:
    shared = SharedBackends(create_backend)
    a, b = shared("infinitevggt", **INFINITE), shared("infinitevggt", **INFINITE)
    first = synthetic_frames(2, h=42, w=56)
    assert all(isinstance(o, list) for o in step_many([a, b], [first[0], first[0]]))
    wrong = Frame("cam", 1, 1, np.zeros((28, 84, 3), np.uint8))  # another grid than the session's
    out = step_many([a, b], [first[1], wrong])  # different sizes: two groups; b refuses alone
    assert isinstance(out[0], list) and len(out[0]) == 1
    assert isinstance(out[1], BackendError)
    assert b.session.num_frames == 1 and a.session.num_frames == 2
