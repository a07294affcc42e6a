"""The issue 13 suite of `recon bench geometric --suite`: recon's geometric backend beside Open3D's trackers.

See recon.commands.bench_geometric for the command. Per synthetic sequence every method sees the same in-memory
frames (decoding excluded from the timings); the order of the methods is reversed from one sequence to the
next so a slow start of the machine does not always hit the same method. Figures per method and sequence:
ATE RMSE (SE(3) alignment with depth, Sim(3) without), RPE over 1 s (translation RMSE, same alignment), the
fraction of frames with a tracked pose, frames/s over the tracking loop. Real footage has no ground truth:
loop return error and vertical drift (`recon.eval.trajectory`) as % of the path, tracked fraction.
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

from recon.commands.bench_geometric import SUITE_METHODS, SUITE_SEQUENCES, _parse_size
from recon.errors import ConfigError, ReconError
from recon.types import Frame

logger = logging.getLogger(__name__)

REAL_SEQUENCES = ("lingbot_loop", "lingbot_university")
RPE_SECONDS = 1.0
# 7-Scenes' Kinect: 585 px at 640 wide. Not the backend's 0.8 x width guess, so "no K" is a real unknown.
KINECT_FOCAL_RATIO = 585.0 / 640.0


@dataclass
class MethodRun:
    """One method on one sequence."""

    sequence: str
    method: str
    frames: int
    fps: float
    tracked_fraction: float
    ate_cm: float | None = None
    ate_percent: float | None = None
    rpe_cm: float | None = None
    path_m: float | None = None
    loop_return_percent: float | None = None
    vertical_drift_percent: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def suite_recipes(frames: int, fps: float = 30.0) -> dict[str, dict[str, Any]]:
    """Trajectory and degradations of each synthetic sequence; the loop's speed closes it on the last frame."""
    from recon.datasets.degrade import Degradations
    from recon.datasets.synthetic import LOOP_SECONDS

    loop_speed = LOOP_SECONDS * fps / max(frames - 1, 1)
    return {"walk": dict(trajectory="walk", seed=0, degradations=Degradations.realistic()),
            "fast": dict(trajectory="walk", seed=1, degradations=Degradations.realistic(speed=3.0)),
            "loop": dict(trajectory="loop", seed=2, degradations=Degradations.realistic(speed=loop_speed))}


def _render(folder: Path, recipe: dict[str, Any], frames: int, width: int, height: int) -> Path:
    """Render the sequence into `folder` unless a rendering of the same recipe is there already."""
    from recon.datasets.synthetic import generate_sequence

    cam = folder / "camera.json"
    focal = KINECT_FOCAL_RATIO * width
    want = dict(seed=recipe["seed"], trajectory=recipe["trajectory"], num_frames=frames, focal=focal,
                degradations=recipe["degradations"].to_dict())
    if cam.is_file():
        have = json.loads(cam.read_text())
        gen = have.get("generator", {})
        if (have.get("width"), have.get("height")) == (width, height) and all(gen.get(k) == v for k, v in want.items()):
            logger.info("reusing %s", folder)
            return folder
    t0 = time.perf_counter()
    generate_sequence(folder, seed=recipe["seed"], trajectory=recipe["trajectory"], num_frames=frames, width=width,
                      height=height, supersample=1, degradations=recipe["degradations"], focal=focal)
    logger.info("rendered %s (%d frames) in %.0f s", folder, frames, time.perf_counter() - t0)
    return folder


def _run_recon(frames: list[Frame], mode: str) -> tuple[np.ndarray, np.ndarray, float, dict[str, Any]]:
    """Poses [N,4,4] in frame order, tracked flags, seconds, backend extras."""
    from recon.backends import create_backend

    backend = create_backend("geometric", mode=mode)
    poses: dict[int, np.ndarray] = {}
    tracked: dict[int, bool] = {}
    t0 = time.perf_counter()
    for frame in frames:
        for r in backend.step(frame):
            poses[r.seq], tracked[r.seq] = r.T_world_cam, bool(r.tracked)  # revisions replace earlier results
    for r in backend.flush():
        poses[r.seq], tracked[r.seq] = r.T_world_cam, bool(r.tracked)
    seconds = time.perf_counter() - t0
    missing = [f.seq for f in frames if f.seq not in poses]
    if missing:
        raise ConfigError(f"geometric backend returned no result for {len(missing)} frames (first {missing[0]})")
    seqs = [f.seq for f in frames]
    extra = dict(backend.stats().extra)
    return np.stack([poses[s] for s in seqs]), np.array([tracked[s] for s in seqs]), seconds, extra


def _strip(frames: list[Frame], keep_K: bool) -> list[Frame]:
    return [Frame(f.stream_id, f.seq, f.t_ns, f.image, K=f.K if keep_K else None) for f in frames]


def run_method(method: str, frames: list[Frame]) -> tuple[np.ndarray, np.ndarray, float, dict[str, Any]]:
    """Run one of SUITE_METHODS over the frames."""
    from recon.eval.open3d_anchors import open3d_dense_slam, open3d_rgbd_odometry

    if method == "recon-rgbd":
        return _run_recon(frames, "rgbd")
    if method == "recon-mono-K":
        return _run_recon(_strip(frames, True), "mono")
    if method == "recon-mono":
        return _run_recon(_strip(frames, False), "mono")
    if method in ("open3d-slam", "open3d-odometry"):
        run = open3d_dense_slam(frames) if method == "open3d-slam" else open3d_rgbd_odometry(frames)
        return run.T_world_cam, run.tracked, run.seconds, dict(run.settings)
    raise ConfigError(f"unknown method {method!r}; choose from {', '.join(SUITE_METHODS)}")


def score(sequence: str, method: str, T: np.ndarray, tracked: np.ndarray, seconds: float, extra: dict[str, Any],
          gt: np.ndarray | None, fps_data: float, closed: bool) -> MethodRun:
    """Figures of one run; `gt` [N,4,4] in frame order or None (real footage); `closed`: the path is a loop."""
    from recon.eval.trajectory import (
        absolute_trajectory_error,
        loop_return_error,
        relative_pose_error,
        trajectory_length,
        vertical_drift,
    )

    n = len(T)
    out = MethodRun(sequence, method, n, n / seconds, float(np.mean(tracked)), extra=extra)
    align = "se3" if method in ("recon-rgbd", "open3d-slam", "open3d-odometry") else "sim3"
    if gt is not None:
        try:
            ate = absolute_trajectory_error(T, gt, align)
        except ReconError as e:  # e.g. every pose a placeholder at the origin: no scale to align
            logger.warning("%s on %s: no ATE (%s)", method, sequence, e)
            out.extra["ate_error"] = str(e)
            return out
        length = trajectory_length(gt)
        out.ate_cm, out.ate_percent, out.path_m = 100 * ate.rmse, 100 * ate.rmse / length, length
        delta = max(1, round(RPE_SECONDS * fps_data))
        if n > delta:
            out.rpe_cm = 100 * relative_pose_error(T, gt, delta, align, all_pairs=True).trans_stats["rmse"]
    if closed:
        try:
            out.loop_return_percent = 100 * loop_return_error(T)
            out.vertical_drift_percent = 100 * vertical_drift(T)
        except ReconError as e:
            logger.warning("%s on %s: no loop figures (%s)", method, sequence, e)
    return out


def _fmt(v: float | None, spec: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def print_table(runs: list[MethodRun]) -> None:
    print("| sequence | method | frames/s | tracked | ATE | ATE % path | RPE 1 s | loop return % path | "
          "vertical drift % path |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r.sequence} | {r.method} | {r.fps:.1f} | {100 * r.tracked_fraction:.1f} % | "
              f"{_fmt(r.ate_cm, '.2f', ' cm')} | {_fmt(r.ate_percent, '.2f', ' %')} | {_fmt(r.rpe_cm, '.2f', ' cm')} | "
              f"{_fmt(r.loop_return_percent, '.2f', ' %')} | {_fmt(r.vertical_drift_percent, '.2f', ' %')} |")


def run_suite(args: argparse.Namespace) -> int:
    from recon.datasets import open_sequence

    width, height = _parse_size(args.size or "320x240")
    n_frames = int(args.frames or 240)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    names = [s.strip() for s in args.sequences.split(",") if s.strip()]
    bad = [m for m in methods if m not in SUITE_METHODS] + [s for s in names if s not in SUITE_SEQUENCES]
    if bad:
        raise ConfigError(f"unknown --methods / --sequences entries: {', '.join(bad)}")
    recipes = suite_recipes(n_frames)
    runs: list[MethodRun] = []
    with tempfile.TemporaryDirectory(prefix="recon-bench-geometric-suite-") as tmp:
        root = Path(args.data) if args.data else Path(tmp)
        for k, name in enumerate(names):
            folder = _render(root / f"{name}-{width}x{height}-{n_frames}", recipes[name], n_frames, width, height)
            seq = open_sequence(folder)
            frames = list(seq)
            gt = seq.ground_truth.T_world_cam
            order = methods if k % 2 == 0 else methods[::-1]
            for method in order:
                logger.info("%s: %s", name, method)
                T, tracked, seconds, extra = run_method(method, frames)
                runs.append(score(name, method, T, tracked, seconds, extra, gt, 30.0, closed=(name == "loop")))
    real_root = Path(args.real_data) if args.real_data else None
    for name in REAL_SEQUENCES if real_root else ():
        folder = real_root / name / "images"
        if not folder.is_dir():
            logger.warning("no real footage at %s; skipped", folder)
            continue
        frames = list(open_sequence(folder))
        logger.info("%s: recon-mono (%d frames)", name, len(frames))
        T, tracked, seconds, extra = _run_recon(_strip(frames, False), "mono")
        runs.append(score(name, "recon-mono", T, tracked, seconds, extra, None, 30.0, closed=(name == "lingbot_loop")))

    print(f"\nrecon bench geometric --suite  ({os.cpu_count()} CPUs, synthetic {width}x{height}, {n_frames} frames, "
          f"load average {os.getloadavg()[0]:.1f})\n")
    print_table(runs)
    if args.json:
        payload = {"size": [width, height], "frames": n_frames, "cpus": os.cpu_count(),
                   "recipes": {k: {**v, "degradations": v["degradations"].to_dict()} for k, v in recipes.items()},
                   "runs": [asdict(r) for r in runs]}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0
