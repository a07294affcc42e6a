"""`recon live --camera SRC`: reconstruct a live camera (or any source) in one process until Ctrl-C.

Examples:
    recon live --camera 0                                # webcam 0, Rerun recording in runs/live/
    recon live --camera 0 --viewer web                   # serve the web viewer while it runs
    recon live --camera clip.mp4 --realtime --fps 30     # no camera here: play a video as if it were one
    recon live --camera datasets/sample --backend geometric --max-frames 100

The camera, reconstruction and viewer nodes run as threads over `inproc://` (`recon.nodes.run_pipeline`),
the same classes `recon node ...` runs as processes. A live camera keeps only its newest frame (drops are
counted); a file or folder is streamed without loss unless `--realtime` plays it as a camera.
Outputs in OUT (default runs/live): trajectory.tum, points.ply, recording.rrd (with --viewer rrd), summary.json
(per stream: captured, sent, dropped at the camera and at the node, processed, capture-to-publish latency
p50/p95/p99, results lost). Ctrl-C stops cleanly (every processed frame's result is written, however long the
backend takes); a second Ctrl-C forces the stop, and the exit code is 1 when results were lost.
"""

from __future__ import annotations

import argparse
import logging

from recon.backends.flags import add_backend_arguments
from recon.commands.io_args import add_io_arguments, export_sinks

logger = logging.getLogger(__name__)

HELP = "reconstruct a live camera (or any source) in one process: camera index, video, image folder, bag"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camera", required=True, metavar="SRC",
                        help="camera index or /dev/videoN, video file, image folder, dataset, bag, pattern:N:WxH")
    add_backend_arguments(parser)
    parser.add_argument("--out", default="runs/live", metavar="DIR", help="output folder (default runs/live)")
    parser.add_argument("--viewer", default="rrd",
                        help="Rerun viewer output: rrd[:PATH], web[:[HOST:]PORT[:GRPC]] (a browser page, loopback "
                             "unless HOST), connect[:URL] or none; comma-separated to combine (default rrd)")
    parser.add_argument("--fps", type=float, default=None, help="camera rate (with --realtime: playback rate)")
    parser.add_argument("--realtime", action="store_true",
                        help="play a recorded source at --fps as a live camera (latest-frame-wins)")
    parser.add_argument("--camera-info", default=None, metavar="FILE",
                        help="calibration file: ROS camera_info YAML, OpenCV YAML/XML, camera.json, text")
    parser.add_argument("--no-undistort", action="store_true",
                        help="send frames as captured even when the camera info has lens distortion (they are "
                             "undistorted to the pinhole K by default)")
    parser.add_argument("--stream-id", default=None, help="stream name (default: the source's name)")
    parser.add_argument("--no-ply", action="store_true", help="do not write points.ply")
    add_io_arguments(parser, camera_info=False)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import threading
    from pathlib import Path

    import numpy as np

    from recon.backends.flags import backend_options
    from recon.calib import has_distortion
    from recon.commands.backend_args import choose_backend
    from recon.errors import ConfigError
    from recon.nodes.cli_util import ShutdownSignals, topic_options
    from recon.nodes.pipeline import run_pipeline
    from recon.nodes.sources import as_live, load_camera_info, open_source
    from recon.sinks import PointCloudWriter, SegmentedSink, TrajectoryWriter, segment_path
    from recon.sinks.report import write_json

    if args.weights and args.backend == "auto":
        raise ConfigError("--weights needs --backend NAME (the model the file belongs to)")
    backend, reason = choose_backend(args.backend)
    logger.info("%s", reason)
    options = backend_options(args, backend)

    info = load_camera_info(args.camera_info) if args.camera_info else None
    source = open_source(args.camera, fps=args.fps, camera_info=info, **topic_options(args))
    if args.no_undistort and has_distortion(source.camera_info):
        # The camera node undistorts whenever the camera info has coefficients: without them it sends the frames
        # as captured, with K as calibrated.
        logger.info("--no-undistort: frames are sent as captured (distortion %s ignored)",
                    source.camera_info.distortion.tolist())
        source.camera_info = dataclasses.replace(source.camera_info, distortion=np.zeros(0))
    if args.realtime and not source.live:
        if not args.fps:
            raise ConfigError("--realtime needs --fps (the rate to play the source at)")
        source = as_live(source, args.fps)

    out = Path(args.out)
    sinks: list[object] = [SegmentedSink(lambda k: TrajectoryWriter(segment_path(out / "trajectory.tum", k)))]
    if not args.no_ply:
        sinks.append(SegmentedSink(lambda k: PointCloudWriter(segment_path(out / "points.ply", k))))
    sinks += export_sinks(args, out)
    if args.viewer != "none":
        from recon.viewer import create_rerun_sink

        rerun = create_rerun_sink(args.viewer, default_rrd=out / "recording.rrd")
        if rerun is not None:
            sinks.append(rerun)

    stop, abort = threading.Event(), threading.Event()
    with ShutdownSignals(stop.set, abort.set):  # a second signal gives up the results still held
        stats = run_pipeline(source, backend, sinks, mode="inproc", backend_options=options,
                             stream_id=args.stream_id, stop=stop, abort=abort)
    cam = stats.camera
    lost = stats.results_lost + sum(stats.viewer.sink_errors.values())
    streams = {}
    for stream_id, s in stats.node_status.get("sessions", {}).items():
        streams[stream_id] = {"captured": cam.captured, "sent": cam.sent, "dropped_at_camera": cam.drops,
                              "dropped_at_node": s.get("drops", 0), "processed": s.get("frames", 0),
                              "results": stats.viewer.per_stream.get(stream_id, 0),
                              "latency_ms": s.get("latency_ms", {}), "results_lost": s.get("results_lost", 0)}
    write_json(out / "summary.json", {"backend": backend, "backend_reason": reason, "wall_s": stats.wall_s,
                                      "results": stats.viewer.results, "results_lost": lost,
                                      "sink_errors": stats.viewer.sink_errors, "streams": streams,
                                      "stopped_on_error": stats.stopped_on_error})
    logger.info("live: %d frames sent, %d dropped at the camera, %d results, %d lost, %.1f s; outputs in %s",
                cam.sent, cam.drops, stats.viewer.results, lost, stats.wall_s, out)
    if lost:
        logger.error("%d results were lost (see %s)", lost, out / "summary.json")
        return 1
    return 1 if stats.stopped_on_error else 0
