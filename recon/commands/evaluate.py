"""`recon eval PRED GT`: score an estimated TUM trajectory against ground truth (ATE, RPE).

Examples:
    recon eval runs/sample/trajectory.tum datasets/sample/groundtruth.txt
    recon eval est.txt gt.txt --align se3 --delta 10 --json metrics.json

Both files are TUM format (`timestamp tx ty tz qx qy qz qw`, camera-to-world). `--align sim3` (default) is evo's
`--align --correct_scale`, right for up-to-scale (monocular) estimates; use `se3` for metric ones. A constant time
offset between the two clocks is detected (`--t-offset auto`, the default) or given (`--t-offset 1.25`); every
figure is printed with the number of poses it rests on, and fewer than 90 % matched poses print a warning.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "score a TUM trajectory against ground truth: ATE and RPE after Sim(3)/SE(3) alignment"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", type=Path, help="estimated trajectory (TUM file)")
    parser.add_argument("gt", type=Path, help="ground-truth trajectory (TUM file, e.g. groundtruth.txt)")
    parser.add_argument("--align", choices=("sim3", "se3", "none"), default="sim3",
                        help="alignment before scoring: sim3 (with scale, default), se3 (rigid) or none")
    parser.add_argument("--delta", type=int, default=1, help="RPE frame delta (default 1)")
    parser.add_argument("--all-pairs", action="store_true",
                        help="RPE over every pair (i, i+delta) instead of a stride of delta (evo's default)")
    parser.add_argument("--max-diff", type=float, default=0.01,
                        help="largest timestamp difference in seconds for matching poses (default 0.01)")
    parser.add_argument("--t-offset", default="auto", metavar="SECONDS|auto",
                        help="constant seconds added to the prediction's stamps before matching; auto (default) "
                             "detects one (a video stamped from 0 against ground truth on the capture clock) and "
                             "uses it when it matches more poses; 0 turns detection off")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the metrics to OUT")


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}{unit}"
    return f"{value}{unit}"


def format_table(m: dict[str, Any]) -> str:
    """Human-readable summary of an evaluate_run() dict; every figure says how many poses (or pairs) it rests on."""
    n = f"[{m['num_matched']}/{m['num_pred_poses']} poses matched]"
    pairs = f"[{m['rpe_num_pairs']} pairs of {m['num_matched']} matched poses]"
    offset = m.get("t_offset_s") or 0.0
    how = "detected" if m.get("t_offset_detected") else "given"
    rows = [
        ("matched poses", f"{m['num_matched']} of {m['num_pred_poses']} predicted ({m['num_gt_poses']} in GT, "
                          f"{100 * m.get('match_fraction', 1.0):.0f} %)"),
        ("time offset", f"{offset:+.6f} s ({how})"),
        ("alignment", f"{m['align']} (scale {_fmt(m['scale'])})  {n}"),
        ("trajectory length", f"{_fmt(m['trajectory_length'])}  {n}"),
        ("ATE rmse", f"{_fmt(m['ate_rmse'])}  ({_fmt(m['ate_pct_of_length'], '%')} of length)  {n}"),
        ("ATE mean / median / max", " / ".join(_fmt(m[f"ate_{k}"]) for k in ("mean", "median", "max")) + f"  {n}"),
        (f"RPE trans rmse (delta {m['rpe_delta']})", f"{_fmt(m['rpe_trans_rmse'])}  {pairs}"),
        ("RPE rot rmse", f"{_fmt(m['rpe_rot_deg_rmse'], ' deg')}  {pairs}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if m.get("match_warning"):
        lines.append(f"WARNING: {m['match_warning']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from recon.errors import ConfigError
    from recon.eval.runner import evaluate_run

    if args.delta < 1:
        raise ConfigError(f"--delta must be >= 1, got {args.delta}")
    if args.max_diff < 0:
        raise ConfigError(f"--max-diff must be >= 0, got {args.max_diff}")
    t_offset: float | str = "auto"
    if args.t_offset != "auto":
        try:
            t_offset = float(args.t_offset)
        except ValueError as e:
            raise ConfigError(f"--t-offset must be a number of seconds or auto, got {args.t_offset!r}") from e
    metrics = evaluate_run(args.pred, args.gt, align=args.align, delta=args.delta, all_pairs=args.all_pairs,
                           max_diff_s=args.max_diff, t_offset_s=t_offset)
    metrics["pred_path"] = str(args.pred)
    metrics["gt_path"] = str(args.gt)
    sys.stdout.write(format_table(metrics) + "\n")
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(metrics, indent=2) + "\n")
        except OSError as e:
            raise ConfigError(f"cannot write --json {args.json}: {e}") from e
    return 0
