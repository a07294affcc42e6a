"""The `recon` command line: a thin layer that parses arguments and calls library functions.

Examples:
    recon replay datasets/sample                       # weight-free geometric backend, writes runs/<name>/
    recon replay SEQ --backend streamvggt --weights checkpoints.pth
    recon live --camera 0                              # or any source: a video file, an image folder
    recon eval runs/sample/trajectory.tum datasets/sample/groundtruth.txt
    recon synth out/ --seed 3 --trajectory orbit
    recon bench geometric
    recon weights list
    recon node recon --bind tcp://127.0.0.1:5555 --publish tcp://127.0.0.1:5556 --backend geometric
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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO or $RECON_LOG_LEVEL)")
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
