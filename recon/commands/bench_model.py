"""`recon bench model`: per-frame latency and memory of the StreamVGGT streaming step against frame index.

Builds the full-size architecture (VGGT-1B / StreamVGGT: 24 DINO + 24+24 aggregator blocks, camera head, two DPT
heads; ~1.19 B parameters) with random weights and streams synthetic frames through one `StreamingSession` with
the unbounded KV cache, at a reduced resolution so it runs on a CPU. The table shows how the cache, and with it
memory and the global-attention work, grows with every frame: the problem the bounded InfiniteVGGT memory solves.

Examples:
    recon bench model                                  # full size, 6x8 patches (84x112 px), 24 frames, fp32, CPU
    recon bench model --grid 28x37 --dtype bf16 --device cuda --frames 60    # 518x392 on a GPU
    recon bench model --model-config tiny --frames 200                       # quick look at the mechanics
"""

from __future__ import annotations

import argparse
import gc
import logging
import time

HELP = "streaming step latency and memory vs frame index (full-size StreamVGGT, random weights)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=24, help="frames streamed (default 24)")
    parser.add_argument("--grid", default="6x8", help="patch grid ROWSxCOLS (default 6x8 = 84x112 px)")
    parser.add_argument("--model-config", default="full", choices=("full", "tiny"))
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="parameter and compute dtype (default fp32)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    parser.add_argument("--camera-cache", default="reference", choices=("reference", "per_iteration"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--every", type=int, default=1, help="print every N-th frame (default 1)")


def _rss_mb() -> float:
    try:
        import psutil
    except ImportError:
        return float("nan")
    return psutil.Process().memory_info().rss / 2**20


def run(args: argparse.Namespace) -> int:
    import torch

    from recon.backends.runtime import pick_device
    from recon.models.vggt import build_vggt
    from recon.models.weights import DTYPES

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, cols = (int(v) for v in args.grid.lower().split("x"))
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    t0 = time.perf_counter()
    model = build_vggt(model_config=args.model_config, causal=True, random_init=True, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    patch = model.config.patch_size
    H, W = rows * patch, cols * patch
    tokens_per_frame = rows * cols + model.aggregator.patch_start_idx
    gen = torch.Generator(device="cpu").manual_seed(0)
    base = torch.rand(3, H, W, generator=gen)
    session = model.new_session(camera_cache=args.camera_cache)
    cuda = device.type == "cuda"
    gc.collect()
    rss0 = _rss_mb()
    print(f"model: {args.model_config}, {n_params / 1e6:.1f} M parameters, {args.dtype} on {device} "
          f"({torch.get_num_threads()} CPU threads); built in {build_s:.1f} s; RSS after build {rss0:.0f} MB")
    print(f"input: {H}x{W} px = {rows}x{cols} patches, {tokens_per_frame} tokens/frame, "
          f"{args.frames} frames, camera cache {args.camera_cache!r}")
    print()
    header = "| frame | step ms | KV cache MB | tokens cached/layer | " + \
             ("peak GPU MB |" if cuda else "RSS MB |")
    print(header)
    print("|---|---|---|---|---|")
    lat: list[float] = []
    cache_mb: list[float] = []
    for i in range(args.frames):
        image = torch.roll(base, shifts=2 * i, dims=2).to(device=device, dtype=dtype)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        session.step(image)
        if cuda:
            torch.cuda.synchronize(device)
        lat.append(1000 * (time.perf_counter() - t))
        cache_mb.append(session.nbytes() / 2**20)
        mem = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _rss_mb()
        if i % args.every == 0 or i == args.frames - 1:
            print(f"| {i} | {lat[-1]:.0f} | {cache_mb[-1]:.1f} | {len(session.memory[0])} | {mem:.0f} |")
    print()
    if args.frames >= 6:
        early = sorted(lat[1:4])[1]
        late = sorted(lat[-3:])[1]
        print(f"median step of frames 1-3: {early:.0f} ms; of the last 3 frames: {late:.0f} ms; "
              f"late/early ratio {late / early:.2f}")
    bytes_per = torch.finfo(dtype).bits // 8
    per_frame = len(session.memory) * tokens_per_frame * 2 * model.config.embed_dim * bytes_per
    print(f"aggregator KV held after {session.num_frames} frames: {session.memory.num_tokens()} tokens over "
          f"{len(session.memory)} layers; +{per_frame / 2**20:.2f} MB per frame at this resolution "
          "(allocated storage doubles when full, so the column above grows in steps)")
    per_frame_518 = len(session.memory) * 1041 * 2 * model.config.embed_dim * bytes_per
    print(f"the same cache at 518x392 (1041 tokens/frame) in {args.dtype}: +{per_frame_518 / 2**20:.0f} MB per frame")
    return 0
