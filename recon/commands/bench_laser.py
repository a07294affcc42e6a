"""`recon bench laser`: LASER registration time per window on CPU and the superpixel step's share.

Windows are synthetic depth maps (ground plane, wall and boxes seen by a moving camera) at the model grid of a
1280x720 input (518x294), each in its own random Sim(3) frame with per-object depth factors, so segmentation and
layer alignment do real work. Compares the reference setting (full-resolution Felzenszwalb) with downsampled
segmentation and with 1 or 2 segmentation threads.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

HELP = "LASER registration time per window (CPU) and the superpixel share"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--height", type=int, default=294)
    parser.add_argument("--width", type=int, default=518)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--overlap", type=int, default=5)
    parser.add_argument("--windows", type=int, default=4, help="windows registered per setting")


def _scene_depth(h: int, w: int, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth of a room corner with two boxes, camera sliding sideways; returns (depth, object id)."""
    f = 0.8 * w
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x_ray, y_ray = (cols - w / 2) / f, (rows - h / 2) / f
    cam_x = 0.05 * frame
    depth = np.full((h, w), 6.0)
    obj = np.ones((h, w), np.uint8)
    ground = np.where(y_ray > 1e-3, 1.5 / np.maximum(y_ray, 1e-3), np.inf)
    depth, obj = np.where(ground < depth, ground, depth), np.where(ground < depth, 2, obj)
    for k, (x0, x1, z, top) in enumerate([(-1.0, -0.2, 3.0, 0.5), (0.4, 1.2, 4.0, 0.2)]):
        z_box = np.full((h, w), z)
        x_world, y_world = x_ray * z + cam_x, y_ray * z
        hit = (x_world > x0) & (x_world < x1) & (y_world > top) & (y_world < 1.5)
        closer = hit & (z_box < depth)
        depth, obj = np.where(closer, z_box, depth), np.where(closer, 3 + k, obj)
    return depth.astype(np.float32), obj


def _window(h: int, w: int, start: int, n: int, rng: np.random.Generator):
    import torch

    from recon.types import WindowPrediction

    s = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    factors = rng.uniform(0.92, 1.08, size=8)
    f = 0.8 * w
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    local, poses = [], []
    for i in range(start, start + n):
        d, obj = _scene_depth(h, w, i)
        d = (d * factors[obj] / s).astype(np.float32)
        local.append(np.stack([(cols - w / 2) * d / f, (rows - h / 2) * d / f, d], -1))
        pose = np.eye(4, dtype=np.float32)
        pose[0, 3] = 0.05 * i / s
        poses.append(pose)
    conf = rng.normal(size=(n, h, w)).astype(np.float32)
    return WindowPrediction(list(range(start, start + n)), torch.from_numpy(np.stack(local)),
                            torch.from_numpy(np.stack(poses)), torch.from_numpy(conf))


def run(args: argparse.Namespace) -> int:
    import torch

    from recon.align.depth_layers import LayerConfig
    from recon.align.engine import LaserEngine

    rng = np.random.default_rng(0)
    stride = args.window - args.overlap
    preds = [_window(args.height, args.width, k * stride, args.window, rng) for k in range(args.windows)]
    print(f"LASER registration, {args.windows} windows of {args.window} frames at {args.width}x{args.height} "
          f"(overlap {args.overlap}), torch threads {torch.get_num_threads()}")
    print(f"{'setting':<34} {'ms/window':>10} {'segmentation':>13} {'share':>7} {'layer align':>12}")
    for label, cfg in [("reference (full res, 1 thread)", LayerConfig(workers=1)),
                       ("full res, 2 threads", LayerConfig(workers=2)),
                       ("downsample x2, 2 threads", LayerConfig(downsample=2, workers=2)),
                       ("downsample x4, 2 threads", LayerConfig(downsample=4, workers=2))]:
        engine = LaserEngine(args.window, args.overlap, layer_config=cfg)
        totals, segs, aligns = [], [], []
        for pred in preds:
            t0 = time.perf_counter()
            reg = engine.register(pred)
            totals.append((time.perf_counter() - t0) * 1e3)
            segs.append(reg.timings_ms.get("segmentation", 0.0))
            aligns.append(reg.timings_ms.get("layer_alignment", 0.0))
        total, seg = float(np.mean(totals)), float(np.mean(segs))
        print(f"{label:<34} {total:>10.0f} {seg:>11.0f}ms {seg / total:>7.0%} {np.mean(aligns[1:]):>10.0f}ms")
    return 0
