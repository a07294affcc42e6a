"""`recon bench geometric`: frames/s of the weight-free backend on RGB-D and monocular input, ATE as a sanity figure.

Examples:
    recon bench geometric                              # 640x480, 60 frames of a synthetic walk
    recon bench geometric --size 320x240 --frames 90 --trajectory orbit --json bench.json

A synthetic sequence with ground truth is rendered into a temporary folder (`recon.datasets.synthetic`), read
back through `recon.datasets.open_sequence` and held in memory, so the timed loop measures the backend only
(no PNG decoding). The same frames run once with depth (RGB-D odometry, metric) and once without (monocular
VO, up to scale). Frames/s counts input frames over the wall time of `step` + `flush`; ATE is the RMSE of
camera centres after SE(3) (RGB-D) or Sim(3) (monocular) Umeyama alignment, also as % of the path length.
This is a benchmark, not a test: numbers depend on the machine and its load.

`--suite` is the issue 13 benchmark: on degraded synthetic sequences (Kinect-style depth, motion blur, exposure,
noise, JPEG: `recon synth --realistic`; a hand-held walk, a fast walk at 3x the speed, a loop back to its start)
it runs recon RGB-D, recon monocular with the true K and without K, and Open3D's dense RGB-D SLAM and its
frame-to-frame RGB-D odometry as anchors (`recon.eval.open3d_anchors`), on the same in-memory frames one after
the other, the order reversed from one sequence to the next; then recon monocular (no K) on the real footage in
`--real-data` (no ground truth: loop return error and vertical drift as % of the path, tracked fraction).
Rendered sequences are kept in `--data` and reused when their recipe matches.

    recon bench geometric --suite --data /tmp/bench13 --json bench13.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import ConfigError
from recon.types import Frame

logger = logging.getLogger(__name__)

HELP = "geometric backend: frames/s on 640x480 RGB-D and monocular synthetic input, with ATE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default=None, help="image size WxH of the synthetic sequence (default 640x480; "
                                                       "--suite: 320x240)")
    parser.add_argument("--frames", type=int, default=None, help="number of frames (default 60; --suite: 240)")
    parser.add_argument("--trajectory", default="walk", choices=("walk", "orbit", "forward", "loop"))
    parser.add_argument("--seed", type=int, default=0, help="scene and trajectory seed")
    parser.add_argument("--modes", default="rgbd,mono", help="comma-separated: rgbd, mono")
    parser.add_argument("--keep", default=None, metavar="DIR", help="render into DIR and keep it (default: temp)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--suite", action="store_true",
                        help="issue 13 suite: degraded synthetic sequences and real footage, with Open3D anchors")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="--suite: render the sequences into DIR and reuse them (default: a temp folder)")
    parser.add_argument("--methods", default=",".join(SUITE_METHODS),
                        help=f"--suite: comma-separated subset of {', '.join(SUITE_METHODS)}")
    parser.add_argument("--sequences", default=",".join(SUITE_SEQUENCES),
                        help=f"--suite: comma-separated subset of {', '.join(SUITE_SEQUENCES)}")
    parser.add_argument("--real-data", default="../shared/data", metavar="DIR",
                        help="--suite: folder holding lingbot_loop/ and lingbot_university/ ('' to skip)")


# Spelled out here (argument parsing must not import the suite's heavy modules); the suite checks they match.
SUITE_METHODS = ("recon-rgbd", "recon-mono-K", "recon-mono", "open3d-slam", "open3d-odometry")
SUITE_SEQUENCES = ("walk", "fast", "loop")


@dataclass
class ModeResult:
    """Figures of one run of the backend over the sequence."""

    mode: str
    frames: int
    seconds: float
    fps: float
    ate_rmse: float
    ate_percent: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ConfigError(f"--size must look like 640x480, got {text!r}") from e
    return w, h


def run_mode(frames: list[Frame], gt_t_ns: np.ndarray, gt_T: np.ndarray, mode: str) -> ModeResult:
    """Run the backend over in-memory frames once; time it and score the final poses against ground truth."""
    from recon.backends import create_backend
    from recon.eval.trajectory import absolute_trajectory_error, associate_timestamps, trajectory_length

    backend = create_backend("geometric", mode=mode)
    poses: dict[int, np.ndarray] = {}
    t_ns: dict[int, int] = {}
    t0 = time.perf_counter()
    for frame in frames:
        for r in backend.step(frame):
            poses[r.seq], t_ns[r.seq] = r.T_world_cam, r.t_ns  # revisions (is_update) replace earlier poses
    for r in backend.flush():
        poses[r.seq], t_ns[r.seq] = r.T_world_cam, r.t_ns
    seconds = time.perf_counter() - t0
    seqs = sorted(poses)
    est = np.stack([poses[s] for s in seqs])
    assoc = associate_timestamps(np.array([t_ns[s] for s in seqs], dtype=np.int64), gt_t_ns)
    gt = gt_T[assoc.idx_gt]
    ate = absolute_trajectory_error(est[assoc.idx_pred], gt, "se3" if mode == "rgbd" else "sim3")
    stats = backend.stats()
    return ModeResult(mode, len(frames), seconds, len(frames) / seconds, ate.rmse,
                      100.0 * ate.rmse / max(trajectory_length(gt), 1e-12), stats.timings_ms, stats.extra)


def run(args: argparse.Namespace) -> int:
    if args.suite:
        from recon.commands.bench_geometric_suite import run_suite

        return run_suite(args)
    from recon.datasets import open_sequence
    from recon.datasets.synthetic import generate_sequence

    width, height = _parse_size(args.size or "640x480")
    args.frames = args.frames or 60
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("rgbd", "mono")]
    if bad:
        raise ConfigError(f"--modes accepts rgbd and mono, got {', '.join(bad)}")
    with tempfile.TemporaryDirectory(prefix="recon-bench-geometric-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp) / "sequence"
        t0 = time.perf_counter()
        generate_sequence(folder, seed=args.seed, trajectory=args.trajectory, num_frames=args.frames,
                          width=width, height=height)
        logger.info("rendered %d frames at %dx%d in %.1f s", args.frames, width, height, time.perf_counter() - t0)
        sequence = open_sequence(folder)
        frames = list(sequence)
        if sequence.ground_truth is None:
            raise ConfigError(f"the synthetic sequence in {folder} has no ground truth")
        gt_t, gt_T = sequence.ground_truth.t_ns, sequence.ground_truth.T_world_cam

    results = []
    for mode in modes:
        use = frames if mode == "rgbd" else [Frame(f.stream_id, f.seq, f.t_ns, f.image, K=f.K) for f in frames]
        results.append(run_mode(use, gt_t, gt_T, mode))

    print(f"\nrecon bench geometric  ({os.cpu_count()} CPUs, {width}x{height}, {args.frames} frames, "
          f"{args.trajectory} seed {args.seed})\n")
    print("| input | frames/s | ms/frame | ATE RMSE | ATE % of path | tracking losses | keyframes | stride |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        label = "RGB-D (metric)" if r.mode == "rgbd" else "monocular (Sim3-aligned)"
        print(f"| {label} | {r.fps:.1f} | {1000 * r.seconds / r.frames:.1f} | {r.ate_rmse * 100:.2f} cm | "
              f"{r.ate_percent:.2f}% | {r.extra.get('tracking_losses', 0)} | {r.extra.get('keyframes', 0)} | "
              f"{r.extra.get('stride', 1)} |")
    if args.json:
        payload = {"size": [width, height], "frames": args.frames, "trajectory": args.trajectory, "seed": args.seed,
                   "cpus": os.cpu_count(), "results": [asdict(r) for r in results]}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0
