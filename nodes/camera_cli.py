"""`recon node camera`: stream a camera, video, image folder, dataset or bag to a reconstruction node.

Examples:
    recon node camera --source 0 --connect tcp://127.0.0.1:5555 --stream-id desk --encoding jpeg
    recon node camera --source datasets/sample --connect tcp://127.0.0.1:5555 --stream-id sample
    recon node camera --source run.bag --topic /camera/image_raw/compressed --stream-id bag
    recon node camera --source pattern:300:640x480 --fps 30 --live     # generated frames played as a camera
"""

from __future__ import annotations

import argparse
import logging

from recon.nodes.cli_util import add_topic_arguments
from recon.nodes.transport import add_security_arguments

logger = logging.getLogger(__name__)

HELP = "camera node: read a source and stream frames to a reconstruction node"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True,
                        help="camera index or /dev/videoN, video file, image folder, dataset path, "
                             ".bag/.mcap/rosbag2 folder, or pattern:COUNT:WxH")
    parser.add_argument("--connect", default="tcp://127.0.0.1:5555", help="reconstruction node endpoint")
    parser.add_argument("--front", default=None, metavar="ENDPOINT",
                        help="the service's front endpoint (recon serve --ray): ask it where to stream, and again "
                             "when the node is lost (overrides --connect)")
    parser.add_argument("--stream-id", default=None, help="stream name (default: the source's name)")
    parser.add_argument("--fps", type=float, default=None, help="maximum frames per second")
    parser.add_argument("--camera-info", default=None, metavar="FILE",
                        help="calibration file: ROS camera_info YAML, OpenCV YAML/XML, camera.json, text")
    parser.add_argument("--no-undistort", action="store_true",
                        help="send frames as captured even when the camera info has lens distortion")
    parser.add_argument("--encoding", choices=("jpeg", "png", "raw"), default="jpeg", help="image encoding")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--depth-encoding", choices=("f4", "u2", "png"), default="f4",
                        help="RGB-D sources: float32 metres (lossless), uint16 mm, or uint16 mm as PNG")
    add_topic_arguments(parser)
    parser.add_argument("--live", action="store_true",
                        help="play a recorded source in real time at --fps as a live camera (latest-frame-wins)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--stride", type=int, default=1, help="recorded sources: send every N-th frame")
    parser.add_argument("--on-error", choices=("skip", "stop"), default=None,
                        help="dataset sources: skip corrupt frames or stop at the first (exit code 1)")
    parser.add_argument("--resend", type=float, default=5.0, help="seconds before an unacknowledged frame is re-sent")
    parser.add_argument("--keep-acked", type=int, default=64,
                        help="recorded sources: acknowledged frames the node has not checkpointed yet, kept (at most "
                             "this many) to re-send after a node restart so its restored session catches up")
    add_security_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from recon.errors import ConfigError
    from recon.nodes.camera_node import CameraNode, CameraNodeConfig
    from recon.nodes.cli_util import on_shutdown_signals, topic_options
    from recon.nodes.sources import as_live, load_camera_info, open_source
    from recon.nodes.transport import Security, tune_allocator

    tune_allocator()  # frame buffers are reused instead of faulted in anew (recon.nodes.transport)
    info = load_camera_info(args.camera_info) if args.camera_info else None
    if args.stride < 1:
        raise ConfigError(f"--stride must be >= 1, got {args.stride}")
    source = open_source(args.source, fps=args.fps, camera_info=info, on_error=args.on_error, **topic_options(args))
    if args.live and not source.live:
        if not args.fps:
            raise ConfigError("--live needs --fps (the rate to play the recording at)")
        source = as_live(source, args.fps)
    config = CameraNodeConfig(connect=args.connect, stream_id=args.stream_id or getattr(source, "name", "cam0"),
                              encoding=args.encoding, jpeg_quality=args.jpeg_quality,
                              depth_encoding=args.depth_encoding,
                              fps=None if source.live else args.fps, max_frames=args.max_frames,
                              resend_s=args.resend, stride=args.stride, keep_acked=args.keep_acked,
                              undistort=not args.no_undistort, security=Security.from_args(args), front=args.front)
    node = CameraNode(source, config)
    on_shutdown_signals(node.stop)
    try:
        stats = node.run()
    finally:
        source.close()
    return 1 if stats.stopped_on_error else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point without the full `recon` parser (`python -m recon.nodes.camera_cli`): starts faster."""
    from recon.nodes.cli_util import run_standalone

    return run_standalone("recon node camera", HELP, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
