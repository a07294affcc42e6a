"""`recon calib SOURCE --board ...`: calibrate a camera from checkerboard or ChArUco images, a video or a live camera.

Examples:
    recon calib shots/ --board checkerboard:9x6:0.025                 # a folder of images; writes calib/
    recon calib board.mp4 --board charuco:7x5:0.04:0.03 --out cam0   # a video: up to --max-views distinct views
    recon calib 0 --board checkerboard:9x6:0.025 --max-views 25      # live camera 0: move the board, Ctrl-C ends
    recon calib shots/ --board checkerboard:9x6:0.025 --model fisheye
    recon replay SEQ --camera-info calib/camera_info.yaml             # use the result

`--board checkerboard:COLSxROWS:SQUARE` counts *inner* corners (a board of 10x7 squares has 9x6); sizes are metres.
Writes in OUT (default calib/): camera_info.yaml (ROS camera_info, what camera_calibration writes), camera.json,
and calibration_report.json (per-view reprojection errors, views dropped as outliers). Prints the RMS and the error
of every view. Cover the whole image and tilt the board: views that all face the camera leave the focal length
poorly determined.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

HELP = "calibrate a camera from checkerboard / ChArUco images, a video or a live camera (ROS YAML, camera.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE",
                        help="folder of images, video file, bag, or a camera index / /dev/videoN (live)")
    parser.add_argument("--board", required=True, metavar="SPEC",
                        help="checkerboard:COLSxROWS:SQUARE_M (inner corners, e.g. checkerboard:9x6:0.025) or "
                             "charuco:SQUARES_XxSQUARES_Y:SQUARE_M:MARKER_M[:DICT] (e.g. charuco:7x5:0.04:0.03)")
    parser.add_argument("--model", choices=("plumb_bob", "fisheye"), default="plumb_bob",
                        help="lens model: plumb_bob (k1 k2 p1 p2 [k3], default) or fisheye (equidistant k1..k4)")
    parser.add_argument("--out", type=Path, default=Path("calib"), metavar="DIR", help="output folder (calib/)")
    parser.add_argument("--name", default="camera", help="camera name written into the files (default camera)")
    parser.add_argument("--max-views", type=int, default=40, metavar="N",
                        help="views used at most (videos and live cameras: distinct board positions; default 40)")
    parser.add_argument("--min-views", type=int, default=8, metavar="N",
                        help="fewer detected boards is an error (default 8)")
    parser.add_argument("--fit-k3", action="store_true", help="plumb_bob: also fit k3 (fixed at 0 by default)")
    parser.add_argument("--outlier-factor", type=float, default=3.0,
                        help="views whose error exceeds this times the median are dropped (default 3)")


def _named_images(src: object, stop: threading.Event) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB image) per frame: the file name for image folders, `<source>_<seq>` for videos, bags, cameras."""
    from recon.datasets.files import IMAGE_EXTENSIONS

    for frame in src:  # type: ignore[attr-defined]
        if stop.is_set():
            return
        path = Path(str(frame.meta.get("path", "")))
        name = path.name if path.suffix.lower() in IMAGE_EXTENSIONS else f"{getattr(src, 'name', 'frame')}_" \
            f"{frame.seq:06d}"
        yield name, frame.image


def run(args: argparse.Namespace) -> int:
    from recon.calib.calibrate import calibrate, parse_board, select_views
    from recon.calib.camera_info import write_camera_info
    from recon.errors import ConfigError

    board = parse_board(args.board)
    if args.max_views < args.min_views or args.min_views < 3:
        raise ConfigError(f"--min-views must be >= 3 and <= --max-views, got {args.min_views} and {args.max_views}")
    from recon.nodes.sources import open_source

    stop = threading.Event()
    size: list[tuple[int, int]] = []

    def sized(images: Iterator[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
        for name, image in images:
            wh = (int(image.shape[1]), int(image.shape[0]))
            if size and wh != size[0]:
                raise ConfigError(f"{name}: image size {wh} differs from the first image's {size[0]}: calibrate one "
                                  "camera at one resolution")
            size[:1] = [wh]
            yield name, image

    src = open_source(args.source)
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C ends a live capture and calibrates
    try:
        logger.info("looking for a %s in %s%s", board.describe(), args.source,
                    " (live: move the board around; Ctrl-C to finish)" if src.live else "")
        min_motion = 0.0 if Path(args.source).is_dir() else 0.02  # a video or live feed repeats near-equal views
        views = list(select_views(board, sized(_named_images(src, stop)), max_views=args.max_views,
                                  min_motion=min_motion))
    finally:
        signal.signal(signal.SIGINT, previous)
        src.close()
    if not size:
        raise ConfigError(f"{args.source}: no images")
    logger.info("board found in %d views", len(views))
    result = calibrate(views, size[0], model=args.model, min_views=args.min_views,
                       outlier_factor=args.outlier_factor, fit_k3=args.fit_k3, frame_id=args.name)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_camera_info(out / "camera_info.yaml", result.camera_info, "ros", result.distortion_model)
    write_camera_info(out / "camera.json", result.camera_info, "json", result.distortion_model)
    (out / "calibration_report.json").write_text(json.dumps({"board": args.board, **result.report()}, indent=2))

    info = result.camera_info
    print(f"{result.model} calibration of {info.width}x{info.height} from {len(result.per_view)} views "
          f"({len(result.dropped)} dropped): RMS reprojection error {result.rms:.3f} px")
    print(f"  fx {info.K[0, 0]:.2f}  fy {info.K[1, 1]:.2f}  cx {info.K[0, 2]:.2f}  cy {info.K[1, 2]:.2f}")
    print(f"  distortion ({result.distortion_model}) {np.array2string(info.distortion, precision=5)}")
    for name, err in result.per_view.items():
        print(f"  view {name:<28} {err:.3f} px")
    for name, err in result.dropped.items():
        print(f"  view {name:<28} {err:.3f} px  dropped (outlier)")
    for path in ("camera_info.yaml", "camera.json", "calibration_report.json"):
        print(f"  wrote {out / path}")
    return 0
