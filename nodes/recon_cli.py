"""`recon node recon`: the reconstruction node as its own process.

Examples:
    recon node recon --bind tcp://127.0.0.1:5555 --publish tcp://127.0.0.1:5556 --backend geometric
    recon node recon --backend identity -o delay_ms=5          # test backend, 5 ms per frame
    recon node recon --bind tcp://0.0.0.0:5555 --publish tcp://0.0.0.0:5556 --allow-remote \\
        --curve-secret-key server.key_secret --curve-public-key clients/
"""

from __future__ import annotations

import argparse
import logging

from recon.commands.backend_args import add_backend_arguments
from recon.nodes.transport import add_security_arguments

HELP = "reconstruction node: frames in (ROUTER), one backend session per stream, results out (PUB)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default="tcp://127.0.0.1:5555", help="endpoint cameras connect to")
    parser.add_argument("--publish", default="tcp://127.0.0.1:5556", help="endpoint results are published on")
    parser.add_argument("--control", default=None, help="REQ/REP control endpoint (default: --bind port + 2)")
    add_backend_arguments(parser, default="geometric")
    parser.add_argument("--queue-size", type=int, default=8, help="frames queued per stream (= credit window)")
    parser.add_argument("--max-streams", type=int, default=16, help="sessions beyond this are refused")
    parser.add_argument("--session-idle", type=float, default=600.0, metavar="S",
                        help="flush and close a stream's session after S seconds without frames")
    parser.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                        help="grant cameras no credit until N result subscribers are connected")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat period in seconds")
    parser.add_argument("--points-dtype", choices=("f2", "f4"), default="f4", help="point map dtype on the wire")
    parser.add_argument("--stride", type=int, default=1, help="subsample per-pixel result payloads")
    parser.add_argument("--no-image", action="store_true", help="do not send colours with results")
    parser.add_argument("--max-message-mb", type=float, default=None, help="zmq.MAXMSGSIZE in MiB")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding beyond loopback")
    add_security_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from recon.commands.backend_args import backend_options
    from recon.nodes.cli_util import on_shutdown_signals
    from recon.nodes.protocol import DEFAULT_LIMITS
    from recon.nodes.recon_node import ReconNode, ReconNodeConfig
    from recon.nodes.transport import Security

    limits = DEFAULT_LIMITS
    if args.max_message_mb:
        limits = replace(limits, max_message_bytes=int(args.max_message_mb * 2**20))
    config = ReconNodeConfig(bind=args.bind, publish=args.publish, control=args.control, backend=args.backend,
                             backend_options=backend_options(args, args.backend), queue_size=args.queue_size,
                             heartbeat_s=args.heartbeat, points_dtype=args.points_dtype, stride=args.stride,
                             with_image=not args.no_image, max_streams=args.max_streams,
                             min_subscribers=args.wait_subscribers, session_idle_s=args.session_idle,
                             allow_remote=args.allow_remote, limits=limits, security=Security.from_args(args))
    node = ReconNode(config).start()
    stop = on_shutdown_signals(lambda: None)
    try:
        while not stop.is_set() and not node.wait(0.2):
            pass
    finally:
        node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point without the full `recon` parser (`python -m recon.nodes.recon_cli`): starts faster."""
    from recon.nodes.cli_util import run_standalone

    return run_standalone("recon node recon", HELP, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
