"""`recon bench lingbot`: LingBot-Map streaming speed and memory, side by side with the authors' code when importable.

Streams synthetic frames (a texture panning under the camera) through `LingBotSession` at the published resolution
(518x378 = a 27x37 patch grid) with the published memory (8 scale frames, window 64), and reports frames/s, the
late/early per-frame time ratio, KV-cache bytes and peak GPU memory. When the reference package `lingbot_map`
(Robbyant/lingbot-map) is importable, the same weights are loaded into its `GCTStream` (strictly: the key names are
the official ones) and both run the same frames, interleaved and order alternated: the report gives the speed ratio
and the largest pose / relative depth differences. The reference's claim is ~20 FPS at 518x378 (README.md:30).

`gpu_check()` is what `scripts/gpu-check` calls; `--dry-run` runs the same code path on the tiny model on the CPU.

Examples:
    recon bench lingbot --device cuda --frames 200                 # full size, bf16, 518x378
    recon bench lingbot --device cuda --weights lingbot-map-long.pt --keyframe-interval 2
    recon bench lingbot --dry-run                                  # tiny, CPU, a few frames (CI)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import time
from typing import Any

HELP = "LingBot-Map streaming frames/s and memory (518x378), side by side with the reference when importable"

logger = logging.getLogger(__name__)

REFERENCE_PACKAGE = "lingbot_map"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=120, help="frames streamed per run (default 120)")
    parser.add_argument("--grid", default="27x37", help="patch grid ROWSxCOLS (default 27x37 = 378x518 px)")
    parser.add_argument("--device", default="auto", help="cuda, cpu, auto (default auto)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="aggregator autocast dtype (auto: bf16 on CUDA, fp32 on CPU); heads run in fp32")
    parser.add_argument("--weights", default=None, help="checkpoint (default: random weights)")
    parser.add_argument("--keyframe-interval", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions per implementation")
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, 12 frames (code path only)")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")


def _frames(n: int, rows: int, cols: int, device: Any) -> Any:
    import torch

    gen = torch.Generator().manual_seed(0)
    base = torch.rand(3, rows * 14, cols * 14 + 8 * n, generator=gen)
    return torch.stack([base[:, :, 8 * i:8 * i + cols * 14] for i in range(n)]).to(device)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_ours(model: Any, images: Any, interval: int, autocast: Any) -> tuple[dict[str, Any], Any]:
    import torch

    from recon.backends.runtime import autocast_context

    session = model.new_session(keyframe_interval=interval)
    device = images.device
    times, kv = [], []
    poses, depths = [], []
    for image in images:
        _sync(device)
        t = time.perf_counter()
        with autocast_context(device, autocast):
            out = session.push(image)
        _sync(device)
        times.append(time.perf_counter() - t)
        kv.append(session.nbytes())
        poses += [f["pose_enc"][0].float() for f in out]
        depths += [f["depth"][0, ..., 0].float() for f in out]
    n = len(times)
    early = statistics.median(times[min(20, n // 4):min(40, n // 2)]) if n >= 8 else statistics.median(times)
    late = statistics.median(times[-20:])
    return ({"seconds": sum(times), "fps": n / sum(times), "late_over_early": late / early,
             "kv_mb_first": kv[min(n - 1, 10)] / 2**20, "kv_mb_last": kv[-1] / 2**20},
            (torch.stack(poses), torch.stack(depths)))


def _run_reference(ref: Any, images: Any, interval: int) -> tuple[float, Any]:
    _sync(images.device)
    t = time.perf_counter()
    out = ref.inference_streaming(images[None], num_scale_frames=8, keyframe_interval=interval)
    _sync(images.device)
    return time.perf_counter() - t, (out["pose_enc"][0].float(), out["depth"][0, ..., 0].float())


def _reference_model(model: Any, device: Any, autocast: Any) -> Any:
    """The authors' GCTStream with our weights (strict load), aggregator cast as demo.py does."""
    from lingbot_map.models.gct_stream import GCTStream  # type: ignore[import-not-found]

    cfg = model.config
    ref = GCTStream(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
                    enable_3d_rope=True, max_frame_num=cfg.rope3d.max_frame_num, kv_cache_sliding_window=64,
                    kv_cache_scale_frames=8, num_frame_for_scale=8, use_sdpa=importlib.util.find_spec("flashinfer")
                    is None, camera_num_iterations=cfg.camera_head.num_iterations)
    ref.load_state_dict(model.state_dict(), strict=True)
    ref = ref.to(device).eval()
    if autocast is not None and str(autocast) != "torch.float32":
        ref.aggregator.to(autocast)
    return ref


def gpu_check(device: str = "cuda", frames: int = 120, grid: tuple[int, int] = (27, 37), dtype: str = "auto",
              weights: str | None = None, keyframe_interval: int = 1, repeats: int = 2, model_config: str = "full"
              ) -> dict[str, Any]:
    """Run the LingBot part of the GPU check; returns the figures (also logged). See the module docstring."""
    import torch

    from recon.backends.runtime import pick_autocast_dtype, pick_device
    from recon.models.lingbot import build_lingbot

    dev = pick_device(device)
    autocast = pick_autocast_dtype(dtype, dev)
    model = build_lingbot(weights=weights, model_config=model_config, random_init=weights is None, device=dev)
    images = _frames(frames, *grid, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    report: dict[str, Any] = {"device": str(dev), "dtype": str(autocast), "frames": frames,
                              "image_hw": [grid[0] * 14, grid[1] * 14], "model_config": model_config,
                              "keyframe_interval": keyframe_interval}
    ref = None
    if importlib.util.find_spec(REFERENCE_PACKAGE) is not None and model_config == "full":
        try:
            ref = _reference_model(model, dev, autocast)
        except Exception as e:  # noqa: BLE001 - any failure of foreign code is reported, not fatal
            report["reference"] = f"not run: building it failed ({type(e).__name__}: {e})"
    else:
        report["reference"] = f"not run: package {REFERENCE_PACKAGE!r} is not importable"
    ours_s, ref_s = [], []
    with torch.inference_mode():
        for r in range(repeats):
            order = ("ours", "ref") if r % 2 == 0 else ("ref", "ours")
            for who in order:
                if who == "ours":
                    figures, ours_out = _run_ours(model, images, keyframe_interval, autocast)
                    ours_s.append(figures["seconds"])
                    report["ours"] = figures
                elif ref is not None:
                    seconds, ref_out = _run_reference(ref, images, keyframe_interval)
                    ref_s.append(seconds)
    report["ours"]["fps_median"] = frames / statistics.median(ours_s)
    if dev.type == "cuda":
        report["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    if ref_s:
        report["reference"] = {
            "fps_median": frames / statistics.median(ref_s),
            "speed_ratio_ours_over_reference": statistics.median(ref_s) / statistics.median(ours_s),
            "max_abs_pose_diff": float((ours_out[0] - ref_out[0]).abs().max()),
            "max_rel_depth_diff": float(((ours_out[1] - ref_out[1]).abs() / ref_out[1].abs().clamp_min(1e-6)).max()),
        }
    logger.info("lingbot gpu check: %s", report)
    return report


def run(args: argparse.Namespace) -> int:
    rows, cols = (int(v) for v in args.grid.lower().split("x"))
    if args.dry_run:
        report = gpu_check(device="cpu", frames=12, grid=(2, 3), dtype="fp32", repeats=1, model_config="tiny")
    else:
        report = gpu_check(device=args.device, frames=args.frames, grid=(rows, cols), dtype=args.dtype,
                           weights=args.weights, keyframe_interval=args.keyframe_interval, repeats=args.repeats)
    ours = report["ours"]
    print(f"lingbot ({report['model_config']}, {report['image_hw'][0]}x{report['image_hw'][1]}, {report['dtype']} "
          f"on {report['device']}): {ours['fps_median']:.2f} frames/s, late/early per-frame time "
          f"{ours['late_over_early']:.3f}, KV caches {ours['kv_mb_first']:.1f} -> {ours['kv_mb_last']:.1f} MB"
          + (f", peak GPU {report['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in report else ""))
    ref = report["reference"]
    if isinstance(ref, dict):
        speed = ref["speed_ratio_ours_over_reference"]
        print(f"reference: {ref['fps_median']:.2f} frames/s; ours/reference speed {speed:.2f}x; max |pose diff| "
              f"{ref['max_abs_pose_diff']:.2e}, max relative depth diff {ref['max_rel_depth_diff']:.2e}")
    else:
        print(f"reference: {ref}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0
