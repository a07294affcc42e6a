"""`recon synth OUT`: render a synthetic RGB-D sequence with ground truth in the TUM RGB-D layout.

Examples:
    recon synth out/walk0                                   # 60 frames, hand-held walk, seed 0, 320x240
    recon synth out/orbit3 --seed 3 --trajectory orbit --frames 120
    recon synth out/fwd --trajectory forward --width 640 --height 480
    recon synth out/kinect --realistic                      # Kinect-like depth, blur, exposure, noise, JPEG
    recon synth out/fast --realistic --speed 4              # the same with 4x the hand-held motion per frame
    recon synth out/lap --trajectory loop --frames 481      # one lap round the room, back at the start pose
    recon replay out/orbit3                                 # reconstruct it; metrics against groundtruth.txt
"""

from __future__ import annotations

import argparse
import logging
import time

HELP = "render a synthetic RGB-D sequence with ground truth (TUM layout)"

logger = logging.getLogger(__name__)

# Spelled out instead of imported: argument parsing of every `recon` command must not import cv2/open3d.
# tests/datasets/test_synthetic.py checks this equals recon.datasets.synthetic.TRAJECTORIES.
TRAJECTORIES = ("walk", "orbit", "forward", "loop")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder (created; files in it are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="scene and trajectory seed (default 0)")
    parser.add_argument("--trajectory", choices=TRAJECTORIES, default="walk", help="camera path (default walk)")
    parser.add_argument("--frames", type=int, default=60, metavar="N", help="number of frames (default 60)")
    parser.add_argument("--width", type=int, default=320, metavar="W", help="image width in pixels (default 320)")
    parser.add_argument("--height", type=int, default=240, metavar="H", help="image height in pixels (default 240)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate of the timestamps (default 30)")
    parser.add_argument("--supersample", type=int, default=2, metavar="S",
                        help="S x S colour rays per pixel for anti-aliasing (default 2; 1 is ~3x faster)")
    parser.add_argument("--rgb-format", choices=("png", "jpg"), default="png",
                        help="colour image format (default png; jpg is ~6x smaller)")
    parser.add_argument("--jpeg-quality", type=int, default=92, metavar="Q", help="JPEG quality (default 92)")
    parser.add_argument("--focal", type=float, default=None, metavar="F",
                        help="focal length in pixels (default 0.8 x width, the geometric backend's own guess)")
    g = parser.add_argument_group("sensor degradations (recon.datasets.degrade; ground truth stays exact)")
    g.add_argument("--realistic", action="store_true",
                   help="preset of a hand-held Kinect-class camera: every option below on at its stated value "
                        "(options given explicitly override it)")
    g.add_argument("--depth-noise", type=float, default=None, metavar="S",
                   help="Kinect axial depth noise x S (grows with z^2 and at grazing angles; realistic: 1)")
    g.add_argument("--depth-quantise", action=argparse.BooleanOptionalAction, default=None,
                   help="round depth to Kinect disparity steps (realistic: on)")
    g.add_argument("--depth-holes", action=argparse.BooleanOptionalAction, default=None,
                   help="missing depth out of range, at grazing angles, along edges, in blobs (realistic: on)")
    g.add_argument("--motion-blur", type=float, default=None, metavar="E",
                   help="exposure as a fraction of the frame interval, blurring along the motion (realistic: 0.5)")
    g.add_argument("--exposure", type=float, default=None, metavar="S",
                   help="std of the log gain of a drifting auto exposure (realistic: 0.15)")
    g.add_argument("--white-balance", type=float, default=None, metavar="S",
                   help="std of the log gain of each colour channel (realistic: 0.05)")
    g.add_argument("--sensor-noise", type=float, default=None, metavar="S",
                   help="read noise in 8-bit units, plus shot noise (realistic: 2)")
    g.add_argument("--jpeg-artefacts", type=int, default=None, metavar="Q",
                   help="JPEG round trip of each colour image at quality Q (realistic: 80; 0 = none)")
    g.add_argument("--speed", type=float, default=None, metavar="X",
                   help="camera motion per frame x X (fast motion: 3-5; default 1, also with --realistic)")


_DEGRADATION_ARGS = {"depth_noise": "depth_noise", "depth_quantise": "depth_quantise",
                     "depth_holes": "depth_holes", "motion_blur": "motion_blur", "exposure": "exposure",
                     "white_balance": "white_balance", "sensor_noise": "sensor_noise",
                     "jpeg_artefacts": "jpeg_quality", "speed": "speed"}


def degradations_from_args(args: argparse.Namespace):  # -> recon.datasets.degrade.Degradations
    """The `Degradations` the flags ask for: the preset (if --realistic) with explicit flags on top."""
    from recon.datasets.degrade import Degradations

    given = {field: getattr(args, arg) for arg, field in _DEGRADATION_ARGS.items() if getattr(args, arg) is not None}
    return Degradations.realistic(**given) if args.realistic else Degradations(**given)


def run(args: argparse.Namespace) -> int:
    from recon.datasets.synthetic import generate_sequence
    from recon.utils.progress import logs_around_bar

    t0 = time.perf_counter()
    with logs_around_bar():  # a bar per frame on a terminal, a log line every few seconds otherwise
        out = generate_sequence(args.out, seed=args.seed, trajectory=args.trajectory, num_frames=args.frames,
                                width=args.width, height=args.height, fps=args.fps, supersample=args.supersample,
                                rgb_format=args.rgb_format, jpeg_quality=args.jpeg_quality,
                                degradations=degradations_from_args(args), focal=args.focal)
    dt = time.perf_counter() - t0
    print(f"wrote {args.frames} frames ({args.trajectory}, seed {args.seed}, {args.width}x{args.height}) to {out} "
          f"in {dt:.1f} s; read it with `recon replay {out}`")
    return 0
