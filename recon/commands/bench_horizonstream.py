"""`recon bench horizonstream`: HorizonStream's constant-memory claim, measured (not a test).

Two parts, both with random weights and synthetic frames (crops of one smooth texture drifting across the image):

1. **Long stream, tiny model** (the golden fixture's configuration, 56x70 px): `--frames` frames (default 10,000)
   through one `HorizonStreamSession` with sliding size 1 (per-frame streaming, online motion averaging after every
   chunk). Printed per block of frames: median wall and thread-CPU step time (the calling thread's CPU time barely
   moves when other jobs share the cores, so it shows the trend through the noise), the session's held bytes
   (carried K/V, KDA states, motion averaging) and the process's RSS; then late/early ratios. Flat means frame
   10,000 costs what frame 100 did.
2. **Full-size architecture at reduced resolution** (1.21 B parameters, default 6x8 patches = 84x112 px): the
   first chunk (one window of 10 frames) and sliding chunks of the sizes in `--full-sliding`, timed per chunk.

Examples:
    recon bench horizonstream                                   # both parts (~10 min on 1 CPU thread)
    recon bench horizonstream --frames 2000 --skip-full         # quicker look at part 1
    recon bench horizonstream --skip-long --full-sliding 1,21 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import time
from collections.abc import Iterator

HELP = "HorizonStream: flat per-frame time/memory over 10k frames (tiny) and full-size per-chunk time"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=10_000, help="frames of the long tiny stream (default 10000)")
    parser.add_argument("--block", type=int, default=1000, help="frames per printed row of part 1 (default 1000)")
    parser.add_argument("--grid", default="6x8", help="full-size patch grid ROWSxCOLS (default 6x8 = 84x112 px)")
    parser.add_argument("--full-sliding", default="1,4", help="sliding chunk sizes timed at full size (default 1,4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed chunks per sliding size (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="full-size dtype")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--skip-long", action="store_true", help="skip part 1")
    parser.add_argument("--skip-full", action="store_true", help="skip part 2")


def _rss_mb() -> float:
    try:
        import psutil
    except ImportError:
        return float("nan")
    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synthetic_frames(n: int, height: int, width: int, device, seed: int = 0) -> Iterator:
    """`n` frames `[3, height, width]` in [0, 1]: a smooth periodic texture whose crop drifts 1 px per frame."""
    import torch

    g = torch.Generator().manual_seed(seed)
    period = 4 * width
    coarse = torch.rand(1, 3, 8, 16, generator=g)
    tex = torch.nn.functional.interpolate(coarse, size=(height, period), mode="bicubic", align_corners=False)
    tex = torch.cat([tex, tex], dim=-1)[0].clamp(0, 1).to(device)
    for i in range(n):
        x = (i % period)
        yield tex[:, :, x:x + width]


def _long_stream(args: argparse.Namespace) -> None:
    import torch

    from recon.models.horizonstream import HorizonStream, random_init, tiny_config
    from recon.models.horizonstream_session import HorizonStreamSession

    torch.manual_seed(0)
    model = random_init(HorizonStream(tiny_config()), seed=0).eval()
    session = HorizonStreamSession(model, sliding_size=1, seed=0)
    win = model.config.window_size
    print(f"part 1: tiny HorizonStream ({sum(p.numel() for p in model.parameters()):,} parameters), 56x70 px, "
          f"window {win}, sliding size 1, {args.frames} frames, {torch.get_num_threads()} thread(s), CPU fp32")
    print(f"{'frames':>13} {'wall ms':>8} {'CPU ms':>7} {'max ms':>7} {'session KiB':>12} {'RSS MiB':>8} "
          f"{'peak RSS':>9}")
    wall: list[float] = []
    cpu: list[float] = []
    rows: list[tuple[int, float, float, int, float]] = []
    start = 0
    for i, frame in enumerate(synthetic_frames(args.frames, 56, 70, "cpu")):
        t0, c0 = time.perf_counter(), time.thread_time()
        session.push(frame)
        if i >= win:  # the first window is one batched chunk: left out of the per-frame figures
            wall.append(1000 * (time.perf_counter() - t0))
            cpu.append(1000 * (time.thread_time() - c0))
        if ((i + 1) % args.block == 0 or i + 1 == args.frames) and wall:
            row = (i + 1, statistics.median(wall), statistics.median(cpu), session.nbytes(), _rss_mb())
            rows.append(row)
            print(f"{start:>6}-{i + 1:<6} {row[1]:8.2f} {row[2]:7.2f} {max(wall):7.1f} {row[3] / 1024:12.1f} "
                  f"{row[4]:8.1f} {_peak_rss_mb():9.1f}")
            wall, cpu, start = [], [], i + 1
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        print(f"late/early per-frame time (medians, last block vs first): wall {last[1] / first[1]:.3f}, "
              f"thread CPU {last[2] / first[2]:.3f}; session bytes {last[3] / first[3]:.3f}; "
              f"RSS {last[4] / first[4]:.3f}")


def _full_size(args: argparse.Namespace) -> None:
    import torch

    from recon.backends.runtime import pick_device
    from recon.models.horizonstream import HorizonStream, random_init
    from recon.models.weights import DTYPES

    rows_, cols_ = (int(v) for v in args.grid.lower().split("x"))
    device, dtype = pick_device(args.device), DTYPES[args.dtype]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = random_init(HorizonStream(), seed=0).to(device=device, dtype=dtype).eval()
    model.select_attention(device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\npart 2: full-size HorizonStream, {n_params / 1e6:.1f} M parameters (built in "
          f"{time.perf_counter() - t0:.1f} s), {rows_ * 14}x{cols_ * 14} px ({rows_}x{cols_} patches), "
          f"{args.dtype} on {device}, {torch.get_num_threads()} thread(s)")
    win = model.config.window_size
    sizes = [int(s) for s in args.full_sliding.split(",") if s.strip()]
    total = win + sum(sizes) * args.repeats
    frames = synthetic_frames(total, rows_ * 14, cols_ * 14, device)
    state = model.new_state()
    print(f"{'chunk':>6} {'frames':>7} {'s/chunk':>8} {'CPU s':>7} {'ms/frame':>9} {'state MiB':>10} {'RSS MiB':>8}")

    def run_chunk(n: int) -> None:
        nonlocal state
        images = torch.stack([next(frames) for _ in range(n)]).to(dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.thread_time()
        with torch.inference_mode():
            _, state = model.forward_chunk(images, state)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        print(f"{state.chunk_idx - 1:>6} {n:>7} {dt:8.2f} {time.thread_time() - c:7.2f} {1000 * dt / n:9.1f} "
              f"{state.nbytes() / 2**20:10.2f} {_rss_mb():8.0f}")

    run_chunk(win)
    for n in sizes:
        for _ in range(args.repeats):
            run_chunk(n)
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def run(args: argparse.Namespace) -> int:
    import torch

    previous = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if not args.skip_long:
            _long_stream(args)
        if not args.skip_full:
            _full_size(args)
    finally:
        torch.set_num_threads(previous)
    return 0
