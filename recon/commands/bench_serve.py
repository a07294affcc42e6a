"""`recon bench serve`: serving many cameras from one model: the stream batch against one step per stream, and the
memory of registered-but-idle sessions with offload.

1. Throughput: N = 1, 2, 4, 8 InfiniteVGGT sessions on one model (the full-size architecture, ~1.2 B parameters,
   random weights, at a reduced resolution; `--model-config tiny` for a quick look), each tick one frame per
   session. "unbatched" steps the sessions one after another (N model calls, what a node without batching does),
   "batched" steps them in one call (recon.models.batched). Modes alternate per round and swap order every
   round. Reported: aggregate frames/s, and each stream's latency from the tick's start to its result, as p99
   over streams and ticks, in milliseconds and in ticks of the batched run (a tick is one batched call).
2. Memory: one session's KV memory after `--frames` frames, unpaged (its own doubling buffers) and paged (arena
   pages at its peak); then `--registered` sessions (100) served in rounds of `--active` (8) through a
   `recon.memory.offload.KVPagePool` whose arena (`recon.memory.paged.KVArena`, fixed size) holds `--active`
   sessions' peak: pages used, sessions resident at most, offloads, and an offloaded session's arena pages (0)
   and host bytes. The arena is preallocated, so its page counts are the device memory on CPU and GPU alike.

Examples:
    recon bench serve                               # full-size architecture, 28x42 px, CPU
    recon bench serve --model-config tiny --ticks 20
    recon bench serve --device cuda --grid 14x18     # 196x252 px on a GPU (scripts/gpu-check runs this)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

HELP = "many streams on one model: batched vs unbatched frames/s and p99 latency, idle-session offload"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-config", default="full", help="full (published size, random weights) or tiny")
    parser.add_argument("--grid", default="2x3", help="patch grid ROWSxCOLS (default 2x3 = 28x42 px)")
    parser.add_argument("--streams", default="1,2,4,8", help="stream counts to measure")
    parser.add_argument("--ticks", type=int, default=4, help="timed ticks per mode and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (modes alternate, order swapped each round)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed ticks before each measurement")
    parser.add_argument("--frames", type=int, default=8, help="memory part: frames per session")
    parser.add_argument("--registered", type=int, default=100, help="memory part: registered sessions")
    parser.add_argument("--active", type=int, default=8, help="memory part: sessions the budget holds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on CPU, times are then the stepping thread's CPU time, "
                             "which a shared machine's other jobs do not inflate; 0: torch's default, wall time)")
    parser.add_argument("--page-kb", type=int, default=64, help="memory part: KV arena page size in KiB")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")


def _model(config: str, device: str) -> Any:
    from recon.models.vggt import build_vggt

    return build_vggt(model_config=config, causal=True, random_init=True, device=device).eval()


def _sessions(model: Any, n: int) -> list[Any]:
    from recon.memory.policies import camera_window_policy, make_policy

    tokens = model.config.aggregator.depth * 64
    return [model.new_session(policy=make_policy("infinitevggt", tokens), camera_policy=camera_window_policy(4))
            for _ in range(n)]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock_for(device: str) -> Any:
    """CPU time of this thread with one torch thread on CPU (all the work runs in it; wall time on a shared
    machine mostly measures the other jobs), else wall time."""
    import torch

    return time.thread_time if device == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def _tick(mode: str, sessions: list[Any], images: list[Any], device: str) -> list[float]:
    """One frame per session; returns each stream's latency (s) from the tick's start to its result."""
    from recon.models.batched import step_batch

    clock = clock_for(device)
    t0 = clock()
    if mode == "batched":
        step_batch(sessions, images)
        _sync(device)
        return [clock() - t0] * len(sessions)
    lat = []
    for s, im in zip(sessions, images, strict=True):
        s.step(im)
        _sync(device)
        lat.append(clock() - t0)
    return lat


def measure_throughput(model: Any, n: int, hw: tuple[int, int], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(n)
    images = [torch.rand(3, *hw, generator=g).to(args.device) for _ in range(n)]
    runs: dict[str, dict[str, list[float]]] = {m: {"wall": [], "lat": [], "tick": []} for m in ("unbatched", "batched")}
    for rnd in range(args.rounds):
        order = ("unbatched", "batched") if rnd % 2 == 0 else ("batched", "unbatched")
        for mode in order:
            sessions = _sessions(model, n)
            for _ in range(args.warmup):
                _tick(mode, sessions, images, args.device)
            for _ in range(args.ticks):
                lat = _tick(mode, sessions, images, args.device)
                runs[mode]["lat"] += lat
                runs[mode]["tick"].append(max(lat))
            runs[mode]["wall"].append(sum(runs[mode]["tick"][-args.ticks:]))
    out: dict[str, Any] = {"streams": n}
    tick_s = statistics.mean(runs["batched"]["tick"])
    for mode, r in runs.items():
        frames = n * args.ticks * args.rounds
        lat = sorted(r["lat"])
        p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
        out[mode] = {"fps": frames / sum(r["wall"]), "p99_ms": 1000 * p99, "p99_ticks": p99 / tick_s}
    out["speedup"] = out["batched"]["fps"] / out["unbatched"]["fps"]
    return out


def measure_memory(model: Any, hw: tuple[int, int], args: argparse.Namespace) -> dict[str, Any]:
    """One session's memory unpaged and paged, then `--registered` sessions through an arena sized for `--active`."""
    import torch

    from recon.memory.offload import KVPagePool, device_bytes
    from recon.memory.paged import KVArena
    from recon.models.batched import step_batch

    class _Holder:  # the pool pages a backend's session; a bare session is wrapped like one (model skipped)
        def __init__(self, session: Any) -> None:
            self.session, self.model = session, session.model

    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, *hw, generator=g).to(dev)
    page = args.page_kb * 2**10
    plain, paged = _sessions(model, 2)
    for _ in range(args.frames):
        plain.step(image)
    one = device_bytes(_Holder(plain), dev)  # an unpaged session's own storage (doubling buffers)
    caches = len(plain.memory) + (len(plain.camera_memory) if plain.camera_memory is not None else 0)
    probe_arena = KVArena(one + 3 * caches * page + page, dev, page)  # its entries plus a partial page per kind
    paged_caches = paged.attach_arena(probe_arena, "probe")
    peak_pages = 0
    for _ in range(args.frames):
        paged.step(image)
        peak_pages = max(peak_pages, sum(c.pages for c in paged_caches))
    del plain, paged, paged_caches, probe_arena
    pool = KVPagePool(budget_bytes=args.active * peak_pages * page, device=dev, page_bytes=page, idle_s=None)
    sessions = _sessions(model, args.registered)
    holders = [_Holder(s) for s in sessions]
    peak_used, most_resident = 0, 0
    t0 = time.perf_counter()
    for _ in range(args.frames):
        for start in range(0, len(sessions), args.active):
            group = list(range(start, min(start + args.active, len(sessions))))
            for i in group:
                pool.acquire(f"s{i}", holders[i])
            step_batch([sessions[i] for i in group], [image] * len(group))
            for i in group:
                pool.release(f"s{i}")
            peak_used = max(peak_used, pool.arena.used_pages)
            most_resident = max(most_resident, sum(e["resident"] for e in pool.describe()["sessions"].values()))
    wall = time.perf_counter() - t0
    st = pool.describe()["sessions"]
    offloaded = [sid for sid, s in st.items() if not s["resident"]]
    idle = offloaded[0] if offloaded else None
    idle_pages = pool.arena.pages_of(idle) if idle else 0
    idle_host = sum(t.numel() * t.element_size() for c in pool._entries[idle].caches or [] for t in
                    (c._host or {}).values()) if idle else 0
    return {"session_bytes": one, "paged_pages": peak_pages, "page_bytes": page, "pages": pool.num_pages,
            "peak_used_pages": peak_used, "most_resident": most_resident, "registered": args.registered,
            "active": args.active, "offloaded_now": len(offloaded), "offloads": sum(s["offloads"] for s in st.values()),
            "idle_arena_pages": idle_pages, "idle_host_bytes": idle_host,
            "all_served": all(s.num_frames == args.frames for s in sessions), "wall_s": wall}


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, cols = (int(x) for x in args.grid.lower().split("x"))
    model = _model(args.model_config, args.device)
    p = model.config.patch_size
    hw = (rows * p, cols * p)
    n_params = sum(t.numel() for t in model.parameters())
    timing = "thread CPU time" if clock_for(args.device) is time.thread_time else "wall time"
    print(f"model: infinitevggt {args.model_config}, {n_params / 1e6:.0f} M parameters, fp32 on {args.device}, "
          f"{hw[0]}x{hw[1]} px ({rows}x{cols} patches), {torch.get_num_threads()} torch threads, {timing}")
    print()
    if not args.skip_throughput:
        print("| streams | unbatched frames/s | batched frames/s | speedup | p99 unbatched (ms) | p99 batched (ms) "
              "| p99 unbatched (ticks) | p99 batched (ticks) |")
        print("|---|---|---|---|---|---|---|---|")
    for n in () if args.skip_throughput else (int(x) for x in args.streams.split(",")):
        r = measure_throughput(model, n, hw, args)
        u, b = r["unbatched"], r["batched"]
        print(f"| {n} | {u['fps']:.2f} | {b['fps']:.2f} | {r['speedup']:.2f}x | {u['p99_ms']:.0f} | "
              f"{b['p99_ms']:.0f} | {u['p99_ticks']:.2f} | {b['p99_ticks']:.2f} |", flush=True)
    if not args.skip_memory:
        m = measure_memory(model, hw, args)
        mib = 2**20
        paged = m["paged_pages"] * m["page_bytes"]
        print()
        print(f"memory after {args.frames} frames, per session: unpaged {m['session_bytes'] / mib:.2f} MiB (own "
              f"doubling buffers); paged {m['paged_pages']} pages of {m['page_bytes'] / 2**10:.0f} KiB = "
              f"{paged / mib:.2f} MiB at its peak; offloaded {m['idle_arena_pages']} arena pages "
              f"({m['idle_host_bytes'] / mib:.2f} MiB on the host)")
        print(f"arena of {m['pages']} pages = {m['pages'] * m['page_bytes'] / mib:.1f} MiB ({args.active} sessions' "
              f"peak); {m['registered']} registered sessions served in rounds of {m['active']}: peak "
              f"{m['peak_used_pages']} pages used, at most {m['most_resident']} sessions resident, "
              f"{m['offloaded_now']} offloaded at the end ({m['offloads']} offloads), every session stepped "
              f"{args.frames} times: {m['all_served']}; unpaged, the {m['registered']} sessions would hold "
              f"{m['registered'] * m['session_bytes'] / mib:.1f} MiB; {m['wall_s']:.1f} s")
    return 0
