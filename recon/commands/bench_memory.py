"""`recon bench memory`: per-frame time and memory of the pruned (InfiniteVGGT) streaming memory against the
unbounded (StreamVGGT) cache, over long streams.

Two parts, each configuration run in its own spawned process so that the peak RSS belongs to that run alone:
1. tiny: the golden fixtures' tiny architecture (random weights) on CPU, streamed for `--frames` (10,000) frames
   with the InfiniteVGGT policy and a bounded camera cache, and for `--unbounded-frames` (2,000; the unbounded
   run is stopped early because its cost keeps growing) without eviction. Per-frame time is the median step time
   over the 50 frames ending at frames 100, 1,000, 2,000 and 10,000; the late/early ratio (frame 10,000 over
   frame 100) is the flatness figure (target <= 1.1 for the pruned memory).
   Step time on CPU with one torch thread is the *CPU time of the stepping thread* (`time.thread_time`): all the
   work runs in that thread, and on a shared machine wall time mostly measures the other jobs (wall time is
   kept in the results too; with CUDA or several threads the tables use wall time).
2. full: the published architecture (VGGT-1B / StreamVGGT, ~1.19 B parameters, random weights) at a reduced
   resolution, `--full-frames` frames pruned and unbounded (a small budget so that pruning starts early).

`--model lingbot` runs the same two parts for LingBot-Map (recon.models.lingbot_session): "pruned" is then the
bounded memory (anchors = the 8 scale frames, `--window-frames` sliding window, `--trajectory-frames` trajectory
memory, `--camera-window` camera-head cache; all full after ~40 frames at the defaults), "unbounded" the
reference's unbounded trajectory memory and camera-head cache (same anchors and window).

Examples:
    recon bench memory                                        # both parts, CPU, 1 thread, writes the PNG plot
    recon bench memory --skip-full --frames 2000              # quick look at the tiny part
    recon bench memory --skip-tiny --full-grid 28x37 --full-dtype bf16 --device cuda \\
        --full-budget 1200000 --full-frames 300               # 518x392, published budget, on a GPU
    recon bench memory --model lingbot --skip-full            # LingBot-Map tiny: 10,000 frames bounded
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

HELP = "pruned vs unbounded streaming memory: per-frame time and memory over 10,000 frames (tiny) and full size"

logger = logging.getLogger(__name__)

WINDOW = 50  # frames in each per-frame time median
PAIR_CYCLE = 100  # the paired reference session restarts every this many frames
TINY_MARKS = (100, 1000, 2000, 10000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=10_000, help="tiny pruned run length (default 10000)")
    parser.add_argument("--unbounded-frames", type=int, default=2000,
                        help="tiny unbounded run length (default 2000: it slows down as it goes)")
    parser.add_argument("--grid", default="3x4", help="tiny patch grid ROWSxCOLS (default 3x4 = 42x56 px)")
    parser.add_argument("--budget-frames", type=int, default=32,
                        help="tiny total budget in frames per layer (budget = layers x this x tokens/frame)")
    parser.add_argument("--camera-window", type=int, default=16, help="camera-cache frames kept besides frame 0")
    parser.add_argument("--model", default="vggt", choices=("vggt", "lingbot"),
                        help="vggt: InfiniteVGGT pruning vs the unbounded cache; lingbot: LingBot-Map's bounded memory "
                             "vs its unbounded trajectory and camera caches")
    parser.add_argument("--window-frames", type=int, default=16, help="lingbot: sliding-window frames")
    parser.add_argument("--trajectory-frames", type=int, default=16, help="lingbot: trajectory-memory frames")
    parser.add_argument("--full-frames", type=int, default=300, help="full-size frames per run (default 300)")
    parser.add_argument("--full-grid", default="2x2", help="full-size patch grid (default 2x2 = 28x28 px)")
    parser.add_argument("--full-budget", type=int, default=None,
                        help="full-size total budget in tokens (default: 24 layers x 16 frames x tokens/frame)")
    parser.add_argument("--full-dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cpu", help="device of the full-size part (cpu, cuda); tiny is on CPU")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (default 1)")
    parser.add_argument("--no-pair", action="store_true",
                        help="no paired reference session in the tiny pruned run (half the time, noisier ratio)")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--plot", default="docs/benchmarks_memory.png", help="PNG output ('' for none)")
    parser.add_argument("--json", default="", help="also write every per-frame series to this JSON file")
    parser.add_argument("--from-json", default="", help="report and plot a run saved with --json (no new run)")


def _grid(text: str) -> tuple[int, int]:
    from recon.errors import ConfigError

    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ConfigError(f"grid must be ROWSxCOLS, got {text!r}") from e
    return rows, cols


def stream_run(cfg: dict[str, Any]) -> dict[str, Any]:
    """One streamed run (executed in a child process): step times, cache bytes and RSS per frame, peak RSS."""
    import resource

    import psutil
    import torch

    from recon.memory.policies import DiversityPruningPolicy, camera_window_policy
    from recon.models.vggt import build_vggt
    from recon.models.weights import DTYPES

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    dtype = DTYPES[cfg["dtype"]]
    rows, cols = cfg["grid"]
    policy = None
    if cfg.get("model") == "lingbot":
        model, session, ref, P, layers, budget = _lingbot_sessions(cfg, device, dtype)
    else:
        model = build_vggt(model_config=cfg["model_config"], causal=True, random_init=True, device=device,
                           dtype=dtype)
        P = rows * cols + model.aggregator.patch_start_idx
        layers = model.config.aggregator.depth
        budget = cfg["budget"] or layers * cfg["budget_frames"] * P
        policy = DiversityPruningPolicy(budget) if cfg["pruned"] else None
        camera = camera_window_policy(cfg["camera_window"]) if cfg["pruned"] else None
        capacity = -(-5 * budget // (4 * layers)) if cfg["pruned"] else 0
        session = model.new_session(policy=policy, camera_policy=camera, capacity=capacity)
        # Paired reference: a second session with the same settings, restarted every PAIR_CYCLE frames and stepped
        # right after the long one, so "early" frames are timed under the same machine load as the late ones.
        ref = None
        if cfg.get("paired"):
            ref = model.new_session(policy=DiversityPruningPolicy(budget), capacity=capacity,
                                    camera_policy=camera_window_policy(cfg["camera_window"]))
    patch = model.config.patch_size
    step = session.push if cfg.get("model") == "lingbot" else session.step
    ref_step = None if ref is None else (ref.push if cfg.get("model") == "lingbot" else ref.step)
    ref_ms: list[float] = []
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(3, rows * patch, cols * patch + 64, generator=gen)
    proc = psutil.Process()
    cuda = device.type == "cuda"
    wall_ms, cpu_ms, cache_mb, rss_mb = [], [], [], []
    n = cfg["frames"]
    for i in range(n):
        shift = (7 * i) % 64  # a camera panning over a texture: frames differ, nothing is allocated per frame
        image = base[:, :, shift:shift + cols * patch].to(device=device, dtype=dtype)
        t, c = time.perf_counter(), time.thread_time()
        step(image)
        if cuda:
            torch.cuda.synchronize(device)
        wall_ms.append(1000 * (time.perf_counter() - t))
        cpu_ms.append(1000 * (time.thread_time() - c))
        if ref is not None:
            if i % PAIR_CYCLE == 0:
                ref.reset()
            c = time.thread_time()
            ref_step(image)
            ref_ms.append(1000 * (time.thread_time() - c))
        cache_mb.append(session.nbytes() / 2**20)
        rss_mb.append(proc.memory_info().rss / 2**20 if i % 10 == 0 or i == n - 1 else rss_mb[-1])
    return {
        "step_ms": wall_ms if cuda or cfg["threads"] > 1 else cpu_ms, "wall_ms": wall_ms, "cache_mb": cache_mb,
        "rss_mb": rss_mb, "tokens_per_frame": P, "budget": budget,
        "layers": layers, "hw": (rows * patch, cols * patch),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tokens_cached": session.memory.num_tokens(), "camera_entries": session.camera_cache_lengths()[0],
        "budget_reads_per_frame": (policy.host_reads / n) if policy is not None else 0.0,
        "gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "ref_ms": ref_ms,
    }


def _lingbot_sessions(cfg: dict[str, Any], device: Any, dtype: Any) -> tuple[Any, Any, Any, int, int, int]:
    """(model, session, paired reference session or None, tokens per frame, layers, bound in tokens) for LingBot.

    "pruned" is the bounded memory; otherwise the trajectory memory and the camera-head cache are unbounded as in
    the reference. The bound reported as `budget` is the tokens held over all layers when the bounded memory is full.
    """
    from recon.models.lingbot import build_lingbot

    model = build_lingbot(model_config=cfg["model_config"], random_init=True, device=device, dtype=dtype)
    rows, cols = cfg["grid"]
    P = rows * cols + model.patch_start_idx
    layers = model.config.aggregator.depth
    bounds = {"trajectory_frames": cfg["trajectory_frames"], "camera_window": cfg["camera_window"]}
    if not cfg["pruned"]:
        bounds = {"trajectory_frames": 0, "camera_window": 0}
    options = dict(num_scale_frames=8, sliding_window=cfg["window_frames"], **bounds)
    session = model.new_session(**options)
    ref = model.new_session(**options) if cfg.get("paired") else None
    full = (8 + cfg["window_frames"]) * P + cfg["trajectory_frames"] * model.config.num_special_tokens
    return model, session, ref, P, layers, layers * full


def _run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(stream_run, cfg).result()


def frame_time(step_ms: list[float], frame: int) -> float:
    """Median step time (ms) of the `WINDOW` frames ending at 1-based `frame`."""
    lo = max(0, frame - WINDOW)
    return statistics.median(step_ms[lo:frame])


def _row(name: str, res: dict[str, Any], marks: tuple[int, ...]) -> str:
    n = len(res["step_ms"])
    times = [f"{frame_time(res['step_ms'], m):.2f}" if m <= n else "-" for m in marks]
    cache = [f"{res['cache_mb'][m - 1]:.1f}" if m <= n else "-" for m in marks]
    rss = [f"{res['rss_mb'][m - 1]:.0f}" if m <= n else "-" for m in marks]
    last = max(m for m in marks if m <= n)
    ratio = frame_time(res["step_ms"], last) / frame_time(res["step_ms"], marks[0])
    return (f"| {name} | {n} | " + " | ".join(times) + f" | {ratio:.2f} ({last} / {marks[0]}) | "
            + " / ".join(cache) + " | " + " / ".join(rss) + f" | {res['peak_rss_mb']:.0f} |")


def _print_table(title: str, results: dict[str, dict[str, Any]], marks: tuple[int, ...]) -> None:
    print(f"\n{title}\n")
    marks_text = ", ".join(str(m) for m in marks)
    print("| run | frames | " + " | ".join(f"ms/frame at {m}" for m in marks) + " | late/early | "
          f"KV cache MB at {marks_text} | RSS MB at {marks_text} | peak RSS MB |")
    print("|---|---|" + "---|" * len(marks) + "---|---|---|---|")
    for name, res in results.items():
        print(_row(name, res, marks))


def _plot(path: str, tiny: dict[str, dict[str, Any]], full: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [(title, res) for title, res in (("tiny, CPU", tiny), ("full size, reduced resolution", full)) if res]
    fig, axes = plt.subplots(2, len(parts), figsize=(6 * len(parts), 7), squeeze=False)
    for col, (title, results) in enumerate(parts):
        for color, (name, res) in zip(("tab:blue", "tab:orange"), results.items(), strict=False):
            steps = res["step_ms"]
            w = max(1, min(WINDOW, len(steps) // 20))
            smooth = [statistics.median(steps[max(0, i - w):i + 1]) for i in range(len(steps))]
            frames = range(1, len(steps) + 1)
            axes[0, col].plot(frames, smooth, color=color, label=name)
            axes[1, col].plot(frames, res["cache_mb"], color=color, label=f"{name}: KV caches")
            axes[1, col].plot(frames, res["rss_mb"], "--", color=color, label=f"{name}: process RSS")
        axes[0, col].set(title=f"{title}: step time (running median)", xlabel="frame", ylabel="ms / frame")
        axes[1, col].set(title=f"{title}: memory", xlabel="frame", ylabel="MB", yscale="log")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        if len(results) and max(len(r["step_ms"]) for r in results.values()) > 2000:
            axes[0, col].set_xscale("log")
            axes[1, col].set_xscale("log")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot written to {path}")


def paired_ratio(res: dict[str, Any], frame: int) -> float | None:
    """Late/early time ratio at 1-based `frame`, both measured in the same stretch of wall time.

    Numerator: median of the long run's last `WINDOW` frames up to `frame`. Denominator: median of the paired
    reference session's steps at its own frames 51-100 (the same window as "frame 100"), taken during the
    `PAIR_CYCLE` long frames up to `frame`.
    """
    ref = res.get("ref_ms") or []
    if len(ref) < frame or frame < PAIR_CYCLE:
        return None
    lo = frame - PAIR_CYCLE
    early = [ref[i] for i in range(lo, frame) if i % PAIR_CYCLE >= PAIR_CYCLE - WINDOW]
    return frame_time(res["step_ms"], frame) / statistics.median(early)


def _report_tiny(tiny: dict[str, dict[str, Any]], camera_window: int, threads: int) -> None:
    res, unb = tiny["pruned"], tiny["unbounded"]
    n_p, n_u = len(res["step_ms"]), len(unb["step_ms"])
    print(f"tiny: {res['hw'][0]}x{res['hw'][1]} px, {res['tokens_per_frame']} tokens/frame, {res['layers']} "
          f"global layers, budget {res['budget']} tokens, camera window {camera_window} frames, "
          f"{threads} thread(s); budgets read back {res['budget_reads_per_frame']:.2f} times per frame")
    marks = tuple(m for m in TINY_MARKS if m <= max(n_p, n_u)) or (max(n_p, n_u),)
    _print_table("tiny configuration (CPU, fp32)", tiny, marks)
    first = marks[0]
    if n_p >= first:
        last = min(n_p, TINY_MARKS[-1])
        ratio = frame_time(res["step_ms"], last) / frame_time(res["step_ms"], first)
        print(f"\npruned: per-frame time at frame {last} / frame {first} = {ratio:.3f} (target <= 1.1); "
              f"RSS {res['rss_mb'][first - 1]:.0f} -> {res['rss_mb'][last - 1]:.0f} MB; KV caches "
              f"{res['cache_mb'][first - 1]:.2f} -> {res['cache_mb'][last - 1]:.2f} MB")
        paired = {m: paired_ratio(res, m) for m in TINY_MARKS if m <= n_p}
        if any(v is not None for v in paired.values()):
            print("pruned, paired with a session restarted every 100 frames (same machine load): frame M / frame "
                  "100 = " + ", ".join(f"{v:.3f} at M={m}" for m, v in paired.items() if v is not None))
    if n_u >= first:
        print(f"unbounded (stopped at {n_u} frames): per-frame time at frame {n_u} / frame {first} = "
              f"{frame_time(unb['step_ms'], n_u) / frame_time(unb['step_ms'], first):.3f}; "
              f"RSS {unb['rss_mb'][first - 1]:.0f} -> {unb['rss_mb'][-1]:.0f} MB; KV caches "
              f"{unb['cache_mb'][first - 1]:.2f} -> {unb['cache_mb'][-1]:.2f} MB")


def _report_full(full: dict[str, dict[str, Any]], dtype: str, device: str) -> None:
    res = full["pruned"]
    n = len(res["step_ms"])
    print(f"full: {res['hw'][0]}x{res['hw'][1]} px, {res['tokens_per_frame']} tokens/frame, budget "
          f"{res['budget']} tokens, {dtype} on {device}")
    marks = tuple(m for m in (10, 50, 100, 200, 300, 1000) if m <= n) or (n,)
    _print_table("full-size architecture, reduced resolution", full, marks)
    for name, r in full.items():
        t = frame_time(r["step_ms"], n)
        if r.get("gpu_peak_mb") is not None:
            print(f"{name}: peak GPU memory {r['gpu_peak_mb']:.0f} MB, {1000 / t:.2f} frames/s at frame {n}, "
                  f"KV caches {r['cache_mb'][-1]:.1f} MB")
        else:
            print(f"{name}: {t:.0f} ms/frame at frame {n}, KV caches {r['cache_mb'][-1]:.1f} MB")


def run(args: argparse.Namespace) -> int:
    import json

    base = {"threads": args.threads, "budget": None, "camera_window": args.camera_window, "model": args.model,
            "window_frames": args.window_frames, "trajectory_frames": args.trajectory_frames}
    tiny: dict[str, dict[str, Any]] = {}
    full: dict[str, dict[str, Any]] = {}
    if args.from_json:  # report a saved run, run nothing
        saved = json.loads(Path(args.from_json).read_text())
        tiny, full = saved["tiny"], saved["full"]
        args.skip_tiny = args.skip_full = True
    if not args.skip_tiny:
        cfg = dict(base, model_config="tiny", grid=_grid(args.grid), device="cpu", dtype="fp32",
                   budget_frames=args.budget_frames)
        for name, pruned, frames in (("pruned", True, args.frames), ("unbounded", False, args.unbounded_frames)):
            t0 = time.perf_counter()
            tiny[name] = _run_child(dict(cfg, pruned=pruned, frames=frames, paired=pruned and not args.no_pair))
            print(f"tiny {name}: {frames} frames in {time.perf_counter() - t0:.0f} s")
    if tiny:
        _report_tiny(tiny, args.camera_window, args.threads)
    if not args.skip_full:
        cfg = dict(base, model_config="full", grid=_grid(args.full_grid), device=args.device, dtype=args.full_dtype,
                   budget=args.full_budget, budget_frames=16, frames=args.full_frames)
        for name, pruned in (("pruned", True), ("unbounded", False)):
            t0 = time.perf_counter()
            full[name] = _run_child(dict(cfg, pruned=pruned))
            print(f"full {name}: {args.full_frames} frames in {time.perf_counter() - t0:.0f} s")
    if full:
        _report_full(full, args.full_dtype, args.device)
    if args.json:
        Path(args.json).write_text(json.dumps({"tiny": tiny, "full": full}))
    if args.plot and (tiny or full):
        _plot(args.plot, tiny, full)
    return 0
