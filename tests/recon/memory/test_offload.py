"""Offloadable session memory (recon.memory.offload): a moved session continues bit-identically, idle sessions
leave the budget, and many registered sessions fit a budget sized for a few active ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.backends import create_backend
from recon.memory.offload import KVMemoryError, KVPagePool, device_bytes, move_state, state_tensors
from tests.recon.backends._synthetic import frames as synthetic_frames

INFINITE = {"model_config": "tiny", "image_width": 56, "device": "cpu", "budget": 4 * 2 * 17, "camera_window": 1}


class _Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def _backends(n: int, name: str = "infinitevggt", **options):
    template = create_backend(name, **(options or INFINITE))
    return [template.spawn() for _ in range(n)]


@pytest.mark.parametrize("name,options", [("infinitevggt", INFINITE),
                                          ("horizonstream", {"model_config": "tiny", "device": "cpu"})])
def test_a_moved_session_continues_exactly_like_one_that_never_moved(name: str, options: dict) -> None:
    moved, still = _backends(2, name, **options)
    frames = synthetic_frames(7, h=42, w=56)
    for f in frames[:5]:
        moved.step(f)
        still.step(f)
    old = state_tensors(moved)  # held, so their storage is not freed and reused by the copies
    before = {t.untyped_storage().data_ptr() for t in old if t.untyped_storage().nbytes()}
    assert move_state(moved, torch.device("cpu"), copy=True) > 0  # what an offload does on a CPU-only node
    after = {t.untyped_storage().data_ptr() for t in state_tensors(moved) if t.untyped_storage().nbytes()}
    assert after and not after & before  # really new storage
    del old
    move_state(moved, torch.device("cpu"), copy=True)  # and back
    for f in frames[5:]:
        a, b = moved.step(f), still.step(f)
        assert [r.seq for r in a] == [r.seq for r in b]
        for ra, rb in zip(a, b, strict=True):
            assert np.array_equal(ra.T_world_cam, rb.T_world_cam) and np.array_equal(ra.depth, rb.depth)


def test_unpaged_sessions_are_counted_as_reservations_and_offloaded_whole() -> None:
    """HorizonStream keeps its windows in its own tensors (no `attach_arena`): the pool counts them as pages
    reserved against the arena's budget and moves them whole; paged sessions are tests/recon/memory/test_paged.py."""
    clock = _Clock()
    a, b = _backends(2, "horizonstream", model_config="tiny", device="cpu")
    frame = synthetic_frames(1, h=42, w=56)[0]
    a.step(frame)
    per_session = device_bytes(a, torch.device("cpu"))
    page = max(per_session // 8 // 64 * 64, 64)
    pool = KVPagePool(budget_bytes=4 * per_session + page, device="cpu", page_bytes=page, idle_s=5.0, clock=clock)
    for sid, be in (("a", a), ("b", b)):
        pool.acquire(sid, be)
        be.step(frame)
        pool.release(sid)
    st = pool.describe()["sessions"]
    assert st["a"]["resident"] and st["a"]["pages"] >= 8 and st["b"]["pages"] > 0 and not st["a"]["paged"]
    assert pool.arena.reserved_pages == st["a"]["pages"] + st["b"]["pages"] and pool.arena.used_pages == 0
    assert pool.arena.buffer is None  # nothing paged: the arena's buffer is never allocated
    clock.t = 6.0
    assert pool.sweep() == 2
    assert pool.resident_pages == 0 and not pool.describe()["sessions"]["a"]["resident"]
    pool.acquire("a", a)  # a's next frame: back, b stays offloaded
    a.step(frame)
    pool.release("a")
    st = pool.describe()["sessions"]
    assert st["a"]["resident"] and st["a"]["offloads"] == 1 and not st["b"]["resident"]
    assert pool.arena.reserved_pages == st["a"]["pages"]
    pool.offload("a")
    pool._entries["a"].pages = pool.num_pages + 1  # as if it had grown past the budget while offloaded
    with pytest.raises(KVMemoryError, match="kv-memory"):
        pool.acquire("a", a)
