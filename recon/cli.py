"""recon: 3D reconstruction of a camera's path and surroundings, live or from recordings.

Examples:
    recon replay datasets/sample                       # the bundled sample: trajectory, point cloud, viewer file
    recon replay run.bag --viewer web                  # a ROS bag, watched in the browser at http://127.0.0.1:9090
    recon replay SEQ --export colmap,nerfstudio,mesh   # hand the result to COLMAP, 3DGS/NeRF tools, Blender
    recon live --camera 0                              # a webcam (or a video, an image folder, a bag)
    recon calib shots/ --board checkerboard:9x6:0.025  # calibrate a camera; use it with --camera-info
    recon eval runs/sample/trajectory.tum datasets/sample/groundtruth.txt
    recon weights pull streamvggt                      # download a learned model (the default runs without one)
    recon node recon --bind tcp://127.0.0.1:5555 --publish tcp://127.0.0.1:5556
    recon serve --ray --state-dir /shared/recon        # reconstruction workers on a Ray cluster, one per GPU

`recon COMMAND --help` describes each command; outputs go to runs/<name>/ unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from recon.commands import add_command_table
from recon.errors import ReconError
from recon.utils.log import setup_logging

logger = logging.getLogger("recon")

# Subcommand name -> module with HELP, add_arguments(parser) and run(args) -> int.
# Modules must import nothing heavy at module level (argument parsing stays fast).
COMMANDS: dict[str, str] = {
    "replay": "recon.commands.replay",
    "live": "recon.commands.live",
    "eval": "recon.commands.evaluate",
    "export": "recon.commands.export",
    "calib": "recon.commands.calib",
    "synth": "recon.commands.synth",
    "bench": "recon.commands.bench",
    "weights": "recon.commands.weights",
    "node": "recon.commands.node",
    "serve": "recon.commands.serve",
}


def build_parser() -> argparse.ArgumentParser:
    description, _, epilog = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="recon", description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default=None, metavar="{DEBUG,INFO,WARNING,ERROR}",
                        help="how much to log (default INFO, or $RECON_LOG_LEVEL); progress bars: "
                             "$RECON_PROGRESS=bar|log|off")
    add_command_table(parser, COMMANDS, "command", "_run", "COMMAND", required=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ReconError as e:
        logger.error("%s", e)
        return 1
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
