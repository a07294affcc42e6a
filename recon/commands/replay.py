"""`recon replay SEQUENCE`: reconstruct a recorded sequence and write every output of a run.

Examples:
    recon replay datasets/sample                          # auto backend, writes runs/sample/
    recon replay SEQ --backend geometric --viewer rrd,web # also serve the web viewer until Ctrl-C
    recon replay SEQ --viewer connect:127.0.0.1:9876      # stream to a running `rerun` viewer
    recon replay SEQ --on-error skip --max-frames 100 --stride 2
    recon replay SEQ --distributed                        # camera + reconstruction node processes over tcp

Outputs in OUT (default runs/<sequence name>): trajectory.tum (TUM, T_world_cam), points.ply (voxel-downsampled,
coloured), recording.rrd (with --viewer rrd, the default), metrics.json (when the sequence has ground truth),
summary.json (frames, skipped frames, frames/s, backend and why, timings, results lost, latency). The exit code
is 1 when the reader stopped on a corrupt frame (`--on-error stop`, the default; the outputs of the frames before
it are written) and when any result was lost (a second Ctrl-C, a failing output): the summary says how many.
A session reset (resolution change) starts a new world frame, written to trajectory.seg1.tum / points.seg1.ply.

Frames go `source -> backend.step -> sinks` through the node classes of `recon node ...` as threads over
inproc:// (`recon.nodes.pipeline.run_replay_inproc`; `--distributed`: as processes over loopback tcp); each
output is a sink with `on_result`/`close`, the same objects the viewer and recorder nodes use.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from recon.backends.flags import add_backend_arguments, backend_options
from recon.commands.backend_args import choose_backend
from recon.commands.io_args import add_io_arguments, apply_camera_info, export_outputs, export_sinks
from recon.errors import ConfigError, ReconError
from recon.nodes.cli_util import topic_options

logger = logging.getLogger(__name__)

HELP = "reconstruct a recorded sequence: trajectory, point cloud, Rerun recording, metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sequence", metavar="SEQUENCE",
                        help="what to reconstruct: an image folder (or a scene folder with images/), a video, "
                             "a TUM RGB-D / 7-Scenes / KITTI / ScanNet / nerfstudio folder, or a ROS bag")
    add_backend_arguments(parser)
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/<sequence name>)")
    parser.add_argument("--viewer", default="rrd",
                        help="Rerun viewer output: rrd[:PATH] (a file for `rerun FILE`), web[:[HOST:]PORT[:GRPC]] "
                             "(a browser page, loopback unless HOST), connect[:URL] (a running `rerun`) or none; "
                             "comma-separated to combine (default rrd: OUT/recording.rrd)")
    parser.add_argument("--on-error", choices=("skip", "stop"), default="stop",
                        help="corrupt or missing frame: skip it (counted in the summary) or stop (exit code 1)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="process at most N frames")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate for sources without timestamps (image folders, 7-Scenes, KITTI)")
    parser.add_argument("--stride", type=int, default=1, metavar="N", help="process every N-th frame (default 1)")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="PLY voxel size in scene units (default: 1%% of the first frame's median depth)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-wait", action="store_true", help="with --viewer web: exit when done instead of serving")
    parser.add_argument("--distributed", action="store_true",
                        help="run the camera and reconstruction nodes as separate processes over tcp on loopback "
                             "(recon.nodes); outputs are the same")
    parser.add_argument("--calibration-pass", choices=("auto", "off"), default="auto",
                        help="auto: a monocular geometric replay with no intrinsics known first runs over the "
                             "sequence to self-calibrate the focal length, then reconstructs with it given (twice the "
                             "time, steadier scale on fast footage); off: calibrate while reconstructing, in one pass")
    add_io_arguments(parser, camera_info=True)


def open_sequence_for_replay(path: str, on_error: str, **options: Any) -> Any:
    """The lazy sequence reader for `path` (a separate function so tests can substitute a sequence).

    `options` go to `recon.datasets.open_sequence` (`fps`); stride and max-frames are applied by the loop, so
    they mean the same in-process and with --distributed."""
    try:
        from recon.datasets import open_sequence
    except ImportError as e:
        raise ConfigError(f"sequence readers (recon.datasets.open_sequence) are not available: {e}") from e
    from recon.datasets.base import OnError

    return open_sequence(path, on_error=OnError(on_error), **options)


def _total_frames(sequence: Any, stride: int, max_frames: int | None) -> int | None:
    try:
        n = math.ceil(len(sequence) / stride)
    except TypeError:
        return None
    return min(n, max_frames) if max_frames is not None else n


def run(args: argparse.Namespace) -> int:
    from recon.backends import MAP_OPTIONS, create_backend
    from recon.commands.calibration_pass import SOURCE as CALIBRATION_PASS_SOURCE
    from recon.commands.calibration_pass import run_calibration_pass, wants_calibration_pass
    from recon.datasets.base import CalibratedSequence
    from recon.sinks import (
        PointCloudWriter,
        RunSummary,
        SegmentedSink,
        SinkGroup,
        TrajectoryWriter,
        compute_metrics,
        segment_path,
    )
    from recon.sinks.report import write_json
    from recon.viewer import parse_viewer_spec

    if args.stride < 1:
        raise ConfigError(f"--stride must be >= 1, got {args.stride}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.weights and args.backend == "auto":
        raise ConfigError("--weights needs --backend NAME (the model the file belongs to)")

    if args.fps is not None and not args.fps > 0:
        raise ConfigError(f"--fps must be positive, got {args.fps}")
    if args.distributed and (topic_options(args) or args.camera_info):
        raise ConfigError("--topic, --depth-topic, --camera-info-topic and --camera-info are not passed to the "
                          "camera node process of --distributed yet; run without --distributed")
    backend_name, reason = choose_backend(args.backend)
    logger.info("%s", reason)
    options = backend_options(args, backend_name)  # a wrong option fails here, before anything is read
    sequence = open_sequence_for_replay(args.sequence, args.on_error, **({"fps": args.fps} if args.fps else {}),
                                        **topic_options(args))
    sequence = apply_camera_info(sequence, args)
    calibration = None
    if wants_calibration_pass(args, backend_name, sequence, options):
        logger.info("monocular replay without intrinsics: a first pass self-calibrates the focal length "
                    "(--calibration-pass off: one pass, half the time, less steady on fast footage)")
        # Without the map layer: its corrections do not reach the tracker's focal length, only its outputs.
        tracker_options = {k: v for k, v in options.items() if k not in MAP_OPTIONS}
        info, calibration = run_calibration_pass(sequence, create_backend(backend_name, **tracker_options),
                                                 stride=args.stride, max_frames=args.max_frames)
        if info is not None:  # at the size of the frames the pass read
            sequence = CalibratedSequence(sequence, info, size=(info.width, info.height),
                                          source=CALIBRATION_PASS_SOURCE)
    out = Path(args.out) if args.out else Path("runs") / sequence.name
    viewer_specs = parse_viewer_spec(args.viewer, out / "recording.rrd")
    # --distributed: the backend runs in the reconstruction node process, not here.
    backend = None if args.distributed else create_backend(backend_name, **options)

    # One file per world segment (a reset starts a new world frame): the first segment's writers are the usual
    # trajectory.tum / points.ply, which the metrics and the summary read.
    trajectories = SegmentedSink(lambda k: TrajectoryWriter(segment_path(out / "trajectory.tum", k)))
    clouds = SegmentedSink(lambda k: PointCloudWriter(segment_path(out / "points.ply", k), voxel_size=args.voxel_size))
    trajectory, cloud = trajectories.first, clouds.first
    exports = export_sinks(args, out, voxel_size=args.voxel_size)
    file_sinks = SinkGroup([trajectories, clouds, *exports])
    rerun_sink = None
    if viewer_specs:
        from recon.viewer import create_rerun_sink

        rerun_sink = create_rerun_sink(viewer_specs, backend_stats=backend.stats if backend is not None else None)
    sinks = SinkGroup([trajectories, clouds, *exports, *([rerun_sink] if rerun_sink else [])])

    summary = RunSummary(sequence=sequence.name, backend=backend_name, backend_reason=reason)
    keep_serving = rerun_sink is not None and rerun_sink.output.serving and not args.no_wait
    try:
        if args.distributed:
            from recon.nodes.pipeline import run_replay_distributed

            stats = run_replay_distributed(args.sequence, backend_name, sinks, backend_options=options,
                                           max_frames=args.max_frames, stride=args.stride, on_error=args.on_error)
        else:
            stats = _run_with_progress(sequence, backend, sinks, args)
    finally:
        # Outputs of the frames processed so far are written even when the loop fails.
        file_sinks.close()
        if rerun_sink is not None and not keep_serving:
            rerun_sink.close()

    _fill_summary(summary, stats, sequence, backend, sinks, trajectory, cloud, rerun_sink, args)
    if calibration is not None:
        summary.extra["calibration_pass"] = calibration
    for k, extra in enumerate(trajectories.segments[1:], start=1):
        for stream_id, path in extra.paths.items():
            summary.outputs[f"trajectory:segment{k}" + (f":{stream_id}" if len(extra.paths) > 1 else "")] = str(path)
    summary.outputs.update(export_outputs(exports))
    gt = getattr(sequence, "ground_truth", None)
    if gt is not None and len(gt) and len(trajectory.stream_ids) == 1:
        try:
            metrics = compute_metrics(trajectory.trajectory(), gt, metric=bool(stats.metric))
        except ReconError as e:
            logger.warning("metrics not computed: %s", e)
            summary.extra["metrics_error"] = str(e)
        else:
            summary.outputs["metrics"] = str(write_json(out / "metrics.json", metrics))
            logger.info("ATE %s (%s-aligned, %s%% of the trajectory length)", _fmt(metrics.get("ate_rmse")),
                        metrics.get("align"), _fmt(metrics.get("ate_pct_of_length")))
    elif gt is None:
        logger.info("the sequence has no ground truth: no metrics.json")
    summary_path = summary.write(out / "summary.json")

    print(f"{stats.frames_in} frames in {stats.wall_s:.1f} s ({stats.fps:.2f} frames/s) with {backend_name}; "
          f"{summary.frames_skipped} skipped, {summary.results_lost} results lost")
    for name, path in {**summary.outputs, "summary": str(summary_path)}.items():
        print(f"  {name:<17} {path}")
    if keep_serving:
        rerun_sink.logger.close()
        rerun_sink.output.serve_until_interrupted()
        rerun_sink.close()
    if stats.stopped_on_error:
        print(f"stopped on a corrupt frame: {stats.stopped_on_error} (--on-error skip skips such frames)",
              file=sys.stderr)
        return 1
    if summary.results_lost:
        print(f"{summary.results_lost} results were lost (see {summary_path})", file=sys.stderr)
        return 1
    return 0


def _fill_summary(summary: Any, stats: Any, sequence: Any, backend: Any, sinks: Any, trajectory: Any, cloud: Any,
                  rerun_sink: Any, args: argparse.Namespace) -> None:
    """Counters, timings and output paths of the finished loop into the run summary."""
    summary.frames_in = stats.frames_in
    summary.results_out = stats.results_out
    summary.wall_s = stats.wall_s
    summary.fps = stats.fps
    summary.timings_s = {**stats.timings_s, **{f"sink_{k}": v for k, v in sinks.time_s.items()}}
    summary.stopped_on_error = stats.stopped_on_error
    summary.results_lost = int(getattr(stats, "results_lost", 0))
    for stream_id, s in getattr(stats, "node_status", {}).get("sessions", {}).items():
        summary.latency_ms[stream_id] = s.get("latency_ms", {})
        summary.streams[stream_id] = {k: s.get(k) for k in ("frames", "accepted", "drops", "refused", "rejected",
                                                            "errors", "results_lost", "session", "map_epoch")}
    read_stats = getattr(sequence, "stats", None)
    summary.frames_skipped = int(getattr(read_stats, "frames_skipped", 0))
    summary.skipped_paths = list(getattr(read_stats, "skipped_paths", []))
    if backend is not None:  # None with --distributed: the backend lived in the node process
        b = backend.stats()
        summary.backend_stats = {"frames_in": b.frames_in, "results_out": b.results_out,
                                 "memory_bytes": b.memory_bytes, "timings_ms": b.timings_ms, "extra": b.extra}
    summary.extra = {"metric": stats.metric, "stride": args.stride, "max_frames": args.max_frames,
                     "frames_dropped_by_stride": stats.frames_dropped_by_stride,
                     "voxel_size": cloud.summary()["voxel_size"], "ply_points": cloud.points_written}
    summary.extra["intrinsics"] = _intrinsics(sequence, summary.backend_stats.get("extra", {}))
    for stream_id, path in trajectory.paths.items():
        key = "trajectory" if len(trajectory.paths) == 1 else f"trajectory:{stream_id}"
        summary.outputs[key] = str(path)
    summary.outputs["points"] = str(cloud.path)
    if rerun_sink is not None:
        summary.outputs.update({f"rerun_{k}": v for k, v in rerun_sink.output.urls.items()})


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def _run_with_progress(sequence: Any, backend: Any, sinks: Any, args: argparse.Namespace) -> Any:
    """The in-process replay through the node classes, with progress (frames/s): a bar on a terminal, a log line
    every few seconds otherwise."""
    from recon.utils.progress import logs_around_bar, progress

    total = _total_frames(sequence, args.stride, args.max_frames)
    with progress(total=total, unit="frame", desc=sequence.name, disable=args.no_progress) as bar, \
            logs_around_bar():
        def on_frame(stats: Any) -> None:
            bar.update(1)

        from recon.nodes.pipeline import run_replay_inproc

        # The camera / reconstruction / viewer node classes of `recon node ...`, as threads over inproc://.
        return run_replay_inproc(sequence, backend, sinks, max_frames=args.max_frames, stride=args.stride,
                                 on_frame=on_frame)


def _intrinsics(sequence: Any, backend_extra: dict[str, Any]) -> dict[str, Any] | None:
    """Intrinsics used and where they came from: what the backend ended with (self-calibrated or given) when it
    says, named after the reader's source (`--camera-info`, a calibration file, EXIF) when the frames had K."""
    used = backend_extra.get("intrinsics")
    info = getattr(sequence, "camera_info", None)
    source = getattr(sequence, "intrinsics_source", None)
    if used is not None:
        used = dict(used)
        if used.get("source") == "given" and info is not None:
            used["source"] = source or "the sequence reader"
        return used
    if info is None:
        return None
    K = info.K
    return {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "source": source or "the sequence reader"}
