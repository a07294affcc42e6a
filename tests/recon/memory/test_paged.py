"""The paged KV arena (recon.memory.paged) and the node pool over it (recon.memory.offload.KVPagePool).

Equality argument: a paged cache stores the same bits as `KVCache` (writes and gathers are copies) and hands the
attention contiguous tensors of the same values in the same order, so results must be bitwise equal, not merely
close: every comparison here is `array_equal` / `torch.equal`.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recon.backends import create_backend
from recon.errors import ConfigError
from recon.memory import KVCache, StreamingMemory
from recon.memory.offload import KVPagePool
from recon.memory.paged import KVArena, KVMemoryError, PagedKVCache
from recon.memory.policies import DiversityPruningPolicy
from recon.types import Frame
from tests.recon.backends._synthetic import frames as synthetic_frames

INFINITE = {"model_config": "tiny", "image_width": 56, "device": "cpu", "budget": 4 * 2 * 17, "camera_window": 1}
STREAM = {"model_config": "tiny", "image_width": 56, "device": "cpu"}
H, D, P = 2, 8, 5  # heads, head width, tokens per frame of the synthetic streams
ROW = H * D * 4  # bytes of one float32 key (all heads) of the synthetic streams


def _same(a: list, b: list) -> None:
    assert [r.seq for r in a] == [r.seq for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert np.array_equal(ra.T_world_cam, rb.T_world_cam) and np.array_equal(ra.depth, rb.depth)
        assert np.array_equal(ra.confidence, rb.confidence)


def test_appends_compaction_and_offload_keep_the_bits_and_free_pages() -> None:
    arena = KVArena(64 * ROW * 4, "cpu", page_bytes=4 * ROW)  # 4 entries per page, 64 pages
    paged, plain = PagedKVCache(arena, "s", track_token_ids=True), KVCache(track_token_ids=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        k = torch.randn(1, H, 7, D, generator=gen)
        paged.append(k, -k)
        plain.append(k, -k)
    assert torch.equal(paged.keys(), plain.keys()) and torch.equal(paged.values(), plain.values())
    assert torch.equal(paged.token_ids(), plain.token_ids())
    # 35 entries: K and V at 4 entries a page, int64 token ids (16 B an entry) at 16 a page
    assert paged.pages == 2 * math.ceil(35 / 4) + math.ceil(35 / 16) == arena.used_pages
    keep = torch.stack([torch.arange(0, 35, 3), torch.arange(1, 35, 3)]).unsqueeze(0)  # heads keep different rows
    paged.compact(keep, ascending=True)
    plain.compact(keep, ascending=True)
    assert torch.equal(paged.keys(), plain.keys()) and torch.equal(paged.token_ids(), plain.token_ids())
    assert paged.pages == 2 * 3 + 1 == arena.used_pages  # pruning gave pages back
    assert paged.offload() == 7 and arena.used_pages == 0 and not paged.resident
    assert torch.equal(paged.keys(), plain.keys())  # still readable, from the host copy
    with pytest.raises(RuntimeError, match="offloaded"):
        paged.append(k, -k)
    assert paged.restore() == 7 and arena.used_pages == 7
    paged.append(k, -k)
    plain.append(k, -k)
    assert torch.equal(paged.values(), plain.values())
    paged.reset()
    assert arena.used_pages == 0


def test_the_arena_is_bounded_and_refuses_clearly() -> None:
    with pytest.raises(ConfigError, match="multiple of 64"):
        KVArena(4096, "cpu", page_bytes=100)
    with pytest.raises(ConfigError, match="at least one page"):
        KVArena(64, "cpu", page_bytes=128)
    arena = KVArena(4 * ROW * 3, "cpu", page_bytes=ROW * 4)  # 3 pages
    cache = PagedKVCache(arena, "s")
    with pytest.raises(ConfigError, match="larger pages"):
        wide = torch.zeros(1, H, 1, 64)  # 512 B an entry
        PagedKVCache(KVArena(128, "cpu", page_bytes=64), "t").append(wide, wide)
    cache.append(torch.zeros(1, H, 4, D), torch.zeros(1, H, 4, D))  # 2 pages
    with pytest.raises(KVMemoryError, match="kv-memory"):
        cache.append(torch.zeros(1, H, 1, D), torch.zeros(1, H, 1, D))  # K and V would need 2 more: none taken
    assert arena.used_pages == 2 and len(cache) == 4
    with pytest.raises(ValueError, match="freed twice"):
        arena.free([2])


@pytest.mark.parametrize("name,options", [("infinitevggt", INFINITE), ("streamvggt", STREAM)])
def test_a_paged_session_equals_an_unpaged_one_through_pruning_and_an_offload(name: str, options: dict) -> None:
    template = create_backend(name, **options)
    paged, plain = template.spawn(), template.spawn()
    arena = KVArena(2**22, "cpu", page_bytes=4096)
    caches = paged.session.attach_arena(arena, "paged")
    assert caches and all(isinstance(c, PagedKVCache) for c in caches)
    pages = []
    for i, frame in enumerate(synthetic_frames(6, h=42, w=56)):
        if i == 3:
            held = arena.used_pages
            assert sum(c.offload() for c in caches) == held and arena.used_pages == 0
            assert sum(c.restore() for c in caches) == held
        _same(paged.step(frame), plain.step(frame))
        pages.append(arena.used_pages)
        assert arena.used_pages == sum(c.pages for c in caches)
    if name == "infinitevggt":  # pruned to the budget: pages come back to the arena and stay bounded
        assert max(pages[3:]) <= max(pages[:3]) and min(pages[3:]) < max(pages)
    else:  # unbounded: one more frame, more pages
        assert pages == sorted(pages) and pages[-1] > pages[0]


class _MemorySession:
    """A session of the aggregator's memory only, fed synthetic keys: what the pool pages, without a model."""

    static = False

    def __init__(self, memory: StreamingMemory) -> None:
        self.memory = memory

    def attach_arena(self, arena: KVArena, owner: str) -> list:
        return self.memory.attach_arena(arena, owner)

    def nbytes(self) -> int:
        return self.memory.nbytes()


def _frame(memories: list[StreamingMemory], gen: torch.Generator) -> None:
    for m in memories:
        m.begin_frame()
    for layer in range(len(memories[0])):
        k = torch.randn(1, H, P, D, generator=gen)
        for m in memories:
            m[layer].update(k, -k)
    for m in memories:
        m.end_frame()


def test_a_hundred_registered_sessions_fit_a_budget_for_eight_active_ones() -> None:
    """Each session prunes to about 3 frames per layer (2 layers; the policy's split of 30 tokens): 2 pages per
    layer and kind at 8 entries a page, 8 pages a session once it has 2 frames or more, and 10 at its peak within
    a step (a layer holds its new frame before pruning it away). The arena is 8 such peaks. 100 sessions step in
    turn, 3 frames each: at least 8 are resident at once, never more pages than the arena has, offloaded sessions
    hold none, and every session's caches equal those of a never-moved twin."""
    n, active, layers = 100, 8, 2
    policy = lambda: DiversityPruningPolicy(total_budget=layers * 3 * P)  # noqa: E731
    pool = KVPagePool(budget_bytes=active * 10 * 8 * ROW, device="cpu", page_bytes=8 * ROW, idle_s=None)
    sessions = [_MemorySession(StreamingMemory(layers, policy())) for _ in range(n)]
    backends = [SimpleNamespace(session=s) for s in sessions]  # what the pool attaches to
    twins = [StreamingMemory(layers, policy()) for _ in range(n)]  # never paged, never moved
    gen = torch.Generator().manual_seed(0)
    for rnd in range(3):
        for i, s in enumerate(sessions):
            pool.acquire(f"cam{i}", backends[i])
            _frame([s.memory, twins[i]], gen)
            assert pool.arena.peak_of(f"cam{i}") <= 10
            pool.release(f"cam{i}")
            st = pool.describe()["sessions"]
            resident = [sid for sid, e in st.items() if e["resident"]]
            if rnd == 2 and i >= active:  # every resident session at its full, pruned size
                assert len(resident) >= active
            assert pool.arena.used_pages == sum(st[sid]["pages"] for sid in resident) <= pool.num_pages
            assert all(pool.arena.pages_of(sid) == 0 for sid in st if not st[sid]["resident"])
    st = pool.describe()["sessions"]
    assert len(st) == n and all(e["paged"] and e["offloads"] >= 2 for sid, e in list(st.items())[:n - 2 * active])
    for s, twin in zip(sessions, twins, strict=True):
        assert s.memory.frame_index == 3
        for a, b in zip(s.memory, twin, strict=True):
            assert torch.equal(a.keys(), b.keys()) and torch.equal(a.values(), b.values())


class _Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_node_pool_offloads_idle_backends_and_results_stay_identical() -> None:
    clock = _Clock()
    template = create_backend("infinitevggt", **INFINITE)
    a, b, ref = template.spawn(), template.spawn(), template.spawn()
    pool = KVPagePool(budget_bytes=2**22, device="cpu", page_bytes=4096, idle_s=5.0, clock=clock)
    frames = synthetic_frames(3, h=42, w=56)
    for i, frame in enumerate(frames):
        for sid, be in (("a", a), ("b", b)):
            pool.acquire(sid, be)
            out = be.step(frame)
            pool.release(sid)
            if sid == "a":
                _same(out, ref.step(frame))
        st = pool.describe()["sessions"]
        assert st["a"]["paged"] and st["a"]["resident"] and st["a"]["pages"] > 0
        assert pool.arena.used_pages == st["a"]["pages"] + st["b"]["pages"]
        if i == 0:
            clock.t += 6.0
            assert pool.sweep() == 2 and pool.arena.used_pages == 0  # idle sessions hold no pages
    assert pool.describe()["sessions"]["a"]["offloads"] == 1
    pool.forget("a")
    pool.forget("b")
    assert pool.arena.used_pages == 0


def test_a_session_larger_than_the_budget_is_refused_clearly() -> None:
    backend = create_backend("infinitevggt", **INFINITE)
    pool = KVPagePool(budget_bytes=2 * 4096, device="cpu", page_bytes=4096, idle_s=None)
    pool.acquire("a", backend)
    with pytest.raises(KVMemoryError, match="kv-memory"):
        backend.step(Frame("a", 0, 0, synthetic_frames(1, h=42, w=56)[0].image))


def test_a_batched_step_over_paged_sessions_equals_one_over_unpaged_sessions() -> None:
    """The stream batch (recon.models.batched) with paged caches: the same batch of sessions of different lengths
    gives the same bits whether their caches are paged or not (same model calls, same batch, same values)."""
    from recon.memory.policies import camera_window_policy, make_policy
    from recon.models.batched import step_batch
    from recon.models.vggt import VGGT, sane_random_init, tiny_config

    model = sane_random_init(VGGT(tiny_config(causal=True)), seed=1).eval()
    arena = KVArena(2**22, "cpu", page_bytes=2048)

    def sessions() -> list:
        return [model.new_session(policy=make_policy("infinitevggt", total_budget=120),
                                  camera_policy=camera_window_policy(2)) for _ in range(3)]

    plain, paged = sessions(), sessions()
    for i, s in enumerate(paged):
        s.attach_arena(arena, f"s{i}")
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 28, 42, generator=g) for _ in range(6)]
    for group in ([0], [0, 1], [0, 1, 2], [0, 1, 2], [1, 2]):  # different lengths in one batch; pruning from frame 3
        ims = [images[(i + len(group)) % 6] for i in group]
        for a, b in zip(step_batch([plain[i] for i in group], ims), step_batch([paged[i] for i in group], ims),
                        strict=True):
            for key in ("pose_enc", "depth", "world_points"):
                assert torch.equal(a[key], b[key]), key
    assert arena.used_pages == sum(c.pages for s in paged for c in (*s.memory, *s.camera_memory))


def test_a_reservation_is_for_its_owner_only() -> None:
    arena = KVArena(4 * 64, "cpu", page_bytes=64)  # 4 pages
    arena.reserve("a", 3)
    with pytest.raises(KVMemoryError):
        arena.alloc(2, "b")  # 1 free for others
    assert len(arena.alloc(1, "b")) == 1
    assert len(arena.alloc(3, "a")) == 3 and arena.reserved_pages == 0  # its own reservation, consumed
    assert arena.pages_of("a") == 3 and arena.pages_of("b") == 1


def test_the_pool_makes_room_for_a_step_before_it_runs() -> None:
    """A growing (unbounded) session took 4 pages in its last step: its next acquire offloads an idle session to
    free 4 pages and reserves them, so the step never waits for pages mid-way (nor fails after half its layers).
    Pages: 8 entries each, 5 entries a frame, 2 layers x (K, V) = 4 page kinds a session."""
    pool = KVPagePool(budget_bytes=20 * 8 * ROW, device="cpu", page_bytes=8 * ROW, idle_s=None)  # 20 pages
    grow, idle = _MemorySession(StreamingMemory(2)), _MemorySession(StreamingMemory(2))  # no pruning
    holders = {"grow": SimpleNamespace(session=grow), "idle": SimpleNamespace(session=idle)}
    gen = torch.Generator().manual_seed(0)
    for sid, frames in (("idle", 3), ("grow", 4)):  # idle: 15 entries = 8 pages; grow: 20 entries = 12 pages
        for _ in range(frames):
            pool.acquire(sid, holders[sid])
            _frame([holders[sid].session.memory], gen)
            pool.release(sid)
    st = pool.describe()["sessions"]
    assert st["idle"]["resident"] and st["idle"]["pages"] == 8 and st["grow"]["pages"] == 12
    assert pool._entries["grow"].step_extra == 4 and pool.arena.free_pages == 0
    pool.acquire("grow", holders["grow"])  # 4 pages of headroom: the idle session goes now, before the step
    assert not pool.describe()["sessions"]["idle"]["resident"] and pool.arena.reserved_pages == 4
    _frame([grow.memory], gen)  # 25 entries = 16 pages: the reservation taken
    pool.release("grow")
    assert pool.arena.reserved_pages == 0
    assert pool.arena.used_pages == 16 == pool.describe()["sessions"]["grow"]["pages"]
