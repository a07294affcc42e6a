"""`recon bench loop`: loop closure (recon.map) on sequences that return to their start.

Examples:
    recon bench loop ../shared/data/lingbot_loop/images
    recon bench loop SEQ1 SEQ2 --backend geometric --json loop.json

Each sequence is read into memory and run once through `MappedBackend(OdometryRecorder(backend))`, so the
backend's own poses (before) and the corrected ones (after) come from the same run. Figures (recon.map.metrics):
distance between the first and last camera centre over the path length (the return error of a closed path),
the height range along the mean camera up direction over the path length (vertical drift, for walks at
constant height), loops accepted, pose-graph solves and their duration, and the map layer's share of the run
time. A walk need not end exactly where it began, so the last frame is also scored against the early frame it
revisits, found from the images alone (`recon.map.metrics.revisited_frame`: least two-view parallax among the
first `--revisit-window` of the frames): the distance to that frame's camera over the path. With ground truth
(`Sequence.ground_truth`) the ATE after Sim(3) alignment (over the path length) and the rms log-scale of 10-frame
runs against the ground truth (scale drift left in the map) are shown too. `--odometry-edges measured,backend`
runs each sequence once per listed mode of the odometry edges (recon.map.odometry; list a mode twice for an
A B B A order). This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

HELP = "loop closure: return error and vertical drift before/after, time per pose-graph optimisation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sequences", nargs="+", metavar="SEQUENCE", help="sequences that return to their start")
    parser.add_argument("--backend", default="geometric", help="backend to wrap (default geometric)")
    parser.add_argument("--backend-opt", "-o", dest="backend_opt", action="append", default=[], metavar="KEY=VALUE",
                        help="backend option, repeatable")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per sequence (default: all)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--revisit-window", type=float, default=0.15, metavar="FRACTION",
                        help="early frames searched for the place the last frame revisits (default 0.15)")
    parser.add_argument("--odometry-edges", default="default", metavar="MODES",
                        help="comma-separated odometry edge modes to run each sequence with: default (the "
                             "backend's, as the product runs it), measured, backend (scale-1 edges)")


def measure(sequence: str, backend: str, options: dict, max_frames: int | None, revisit_window: float = 0.15,
            odometry_edges: str = "default") -> dict:
    """The loop-closure figures of one sequence."""
    from recon.backends import create_backend, map_options_for
    from recon.datasets import open_sequence
    from recon.map import MapOptions, MappedBackend, OdometryRecorder, loop_figures
    from recon.map.metrics import revisit_error, revisited_frame

    frames = []
    opened = open_sequence(sequence)
    for f in opened:
        frames.append(f)
        if max_frames and len(frames) >= max_frames:
            break
    recorder = OdometryRecorder(create_backend(backend, **options))
    edges = {} if odometry_edges == "default" else {"odometry": {"edges": odometry_edges}}
    map_options = MapOptions.from_dict(map_options_for(backend, edges))
    mapped = MappedBackend(recorder, map_options)
    final: dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    for f in frames:
        final.update({r.seq: r.T_world_cam for r in mapped.step(f) if r.tracked})
    final.update({r.seq: r.T_world_cam for r in mapped.flush() if r.tracked})
    wall = time.perf_counter() - t0
    seqs = sorted(set(final) & set(recorder.poses))
    T_before = np.stack([recorder.poses[s] for s in seqs])
    T_after = np.stack([final[s] for s in seqs])
    before, after = loop_figures(T_before), loop_figures(T_after)
    stats = mapped.stats()
    opt_ms = list(mapped._opt_ms)
    index = {s: i for i, s in enumerate(seqs)}
    early = [f for f in frames[: max(1, int(revisit_window * len(frames)))] if f.seq in index]
    revisit = None
    if early and mapped._K_full is not None and frames[-1].seq == seqs[-1]:
        revisit = revisited_frame([f.image for f in early], frames[-1].image, mapped._K_full)
    if revisit is None:
        logger.warning("%s: no early frame is seen again from the last frame's place; no revisit figure", sequence)
    at = None if revisit is None else index[early[revisit.index].seq]
    truth = _truth_figures(getattr(opened, "ground_truth", None), frames, seqs, T_before, T_after)
    return {"sequence": sequence, "frames": len(frames), "posed": len(seqs), "mode": stats.extra["map_mode"],
            "odometry_edges": map_options.odometry.edges, "odometry_sources": stats.extra["map_odometry"], **truth,
            "keyframes": len(mapped.keyframes), "loops": len(mapped.loops), "optimisations": mapped.optimisations,
            "optimise_ms_mean": float(np.mean(opt_ms)) if opt_ms else None,
            "optimise_ms_max": float(np.max(opt_ms)) if opt_ms else None,
            "return_error_before": before["return_error"], "return_error_after": after["return_error"],
            "vertical_drift_before": before["vertical_drift"], "vertical_drift_after": after["vertical_drift"],
            "revisited_seq": None if at is None else seqs[at],
            "revisited_parallax_deg": None if revisit is None else revisit.parallax_deg,
            "revisit_error_before": None if at is None else revisit_error(T_before, at),
            "revisit_error_after": None if at is None else revisit_error(T_after, at),
            "fps": len(frames) / wall, "map_share": max(0.0, 1.0 - recorder.seconds / wall)}


def _truth_figures(gt, frames: list, seqs: list[int], T_before: np.ndarray, T_after: np.ndarray) -> dict:
    """ATE (Sim(3)-aligned, over the path length) and rms log-scale of 10-frame runs, before and after, over the
    posed frames matched to the ground truth by timestamp; {} without ground truth or with too few matches."""
    from recon.eval.trajectory import absolute_trajectory_error, trajectory_length
    from recon.map.metrics import segment_scales
    from recon.utils.timestamps import associate_timestamps

    if gt is None:
        return {}
    t_ns = {f.seq: f.t_ns for f in frames}
    match = associate_timestamps(np.array([t_ns[s] for s in seqs]), gt.t_ns)
    if len(match) < 20:
        return {}
    order = np.argsort(match.idx_pred)
    pred, G = match.idx_pred[order], np.asarray(gt.T_world_cam)[match.idx_gt[order]]
    out: dict = {}
    for name, T in (("before", T_before), ("after", T_after)):
        out[f"ate_{name}"] = absolute_trajectory_error(T[pred], G).rmse / trajectory_length(G)
        out[f"segment_scale_{name}"] = float(np.sqrt(np.mean(np.log(segment_scales(T[pred], G, 10)) ** 2)))
    return out


def run(args: argparse.Namespace) -> int:
    from recon.backends.options import parse_backend_options

    options = parse_backend_options(args.backend_opt)
    modes = [m.strip() for m in args.odometry_edges.split(",") if m.strip()]
    rows = [measure(s, args.backend, options, args.max_frames, args.revisit_window, mode)
            for s in args.sequences for mode in modes]
    print(f"{'sequence':<40} {'mode':>4} {'edges':>8} {'kf':>4} {'loops':>5} {'return %':>17} {'vertical %':>17} "
          f"{'revisit (seq) %':>23} {'ATE %':>15} {'seg scale %':>15} {'opt ms':>12} {'fps':>5} {'map %':>5}")
    for r in rows:
        opt = "-" if r["optimise_ms_mean"] is None else f"{r['optimise_ms_mean']:.0f} (max {r['optimise_ms_max']:.0f})"
        rev = "-" if r["revisited_seq"] is None else (
            f"({r['revisited_seq']}) {100 * r['revisit_error_before']:.2f} -> {100 * r['revisit_error_after']:.2f}")
        ate = "-" if "ate_after" not in r else f"{100 * r['ate_before']:.2f} -> {100 * r['ate_after']:.2f}"
        seg = "-" if "ate_after" not in r else (
            f"{100 * r['segment_scale_before']:.2f} -> {100 * r['segment_scale_after']:.2f}")
        print(f"{Path(r['sequence']).as_posix()[-40:]:<40} {r['mode']:>4} {r['odometry_edges']:>8} "
              f"{r['keyframes']:>4} {r['loops']:>5} "
              f"{100 * r['return_error_before']:>7.2f} -> {100 * r['return_error_after']:<6.2f} "
              f"{100 * r['vertical_drift_before']:>7.2f} -> {100 * r['vertical_drift_after']:<6.2f} "
              f"{rev:>23} {ate:>15} {seg:>15} {opt:>12} {r['fps']:>5.1f} {100 * r['map_share']:>5.1f}")
        logger.info("%s (%s edges): odometry edges by source %s", r["sequence"], r["odometry_edges"],
                    r["odometry_sources"])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0
