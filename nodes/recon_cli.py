"""`recon node recon`: the reconstruction node as its own process.

Examples:
    recon node recon --bind tcp://127.0.0.1:5555 --publish tcp://127.0.0.1:5556 --backend geometric
    recon node recon --backend identity -o delay_ms=5          # test backend, 5 ms per frame
    recon node recon --state-dir /var/lib/recon --checkpoint-every 60   # where sessions are checkpointed
    recon node recon --bind tcp://0.0.0.0:5555 --publish tcp://0.0.0.0:5556 --allow-remote \\
        --curve-secret-key server.key_secret --curve-public-key clients/

Sessions are checkpointed by default (every `--checkpoint-every` frames and at a clean stop) under
`--state-dir` (default: $RECON_STATE_DIR, else ~/.local/state/recon/<bind endpoint>), so a restarted node
continues every stream in the same world frame; `--no-state` turns that off. SIGINT/SIGTERM stop cleanly,
waiting for every session to flush however long it takes; a second one forces the stop and the exit code is 1
if results were lost.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from recon.backends.flags import add_backend_arguments
from recon.nodes.transport import add_security_arguments

if TYPE_CHECKING:
    from recon.nodes.recon_node import ReconNodeConfig

HELP = "reconstruction node: frames in (ROUTER), one backend session per stream, results out (PUB)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default="tcp://127.0.0.1:5555", help="endpoint cameras connect to")
    parser.add_argument("--publish", default="tcp://127.0.0.1:5556", help="endpoint results are published on")
    parser.add_argument("--control", default=None, help="REQ/REP control endpoint (default: --bind port + 2)")
    add_backend_arguments(parser, default="geometric")
    parser.add_argument("--queue-size", type=int, default=8,
                        help="frames queued per recorded stream (= its credit window; live streams get 1)")
    parser.add_argument("--max-streams", type=int, default=16, help="sessions beyond this are refused")
    parser.add_argument("--max-streams-per-peer", type=int, default=4, metavar="N",
                        help="streams one sender (CURVE key, remote address or connection) may hold")
    parser.add_argument("--owner-timeout", type=float, default=5.0, metavar="S",
                        help="without CURVE, another sender may take a stream over after its owner was silent S s")
    parser.add_argument("--session-idle", type=float, default=60.0, metavar="S",
                        help="checkpoint, flush and close a stream's session after S seconds without frames")
    parser.add_argument("--state-dir", default=None, metavar="DIR",
                        help="session checkpoints (default: $RECON_STATE_DIR or ~/.local/state/recon/<bind>)")
    parser.add_argument("--no-state", action="store_true", help="no checkpoints: a restart starts new world frames")
    parser.add_argument("--checkpoint-every", type=int, default=30, metavar="N",
                        help="checkpoint each session every N frames (and at a clean stop)")
    parser.add_argument("--state-max-age", type=float, default=3600.0, metavar="S",
                        help="do not restore checkpoints older than S seconds at start")
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help="largest image (width x height) accepted; sizes the message limits too "
                             "(default 3840x2160)")
    parser.add_argument("--max-buffered-mb", type=float, default=1024.0, metavar="MB",
                        help="node-wide budget of decoded frame bytes held in queues and steps")
    parser.add_argument("--no-warmup", action="store_true",
                        help="do not build and step one backend at start (the first camera then waits for it)")
    parser.add_argument("--native-threads", type=int, default=0, metavar="N",
                        help="threads per OpenCV / BLAS call, e.g. 1 to make the sessions the only parallelism "
                             "(default 0: the libraries' own defaults)")
    parser.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                        help="grant cameras no credit until N result subscribers are connected")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat period in seconds")
    parser.add_argument("--points-dtype", choices=("f2", "f4"), default="f4", help="point map dtype on the wire")
    parser.add_argument("--stride", type=int, default=1, help="subsample per-pixel result payloads")
    parser.add_argument("--no-image", action="store_true", help="do not send colours with results")
    parser.add_argument("--max-message-mb", type=float, default=None, help="zmq.MAXMSGSIZE in MiB")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding beyond loopback")
    parser.add_argument("--batch-window-ms", type=float, default=None, metavar="MS",
                        help="step the streams of one backend in one batched model call per tick, waiting at most "
                             "MS for each other (one shared model; default: every stream alone)")
    parser.add_argument("--batch-deadline-ms", type=float, default=None, metavar="MS",
                        help="per-frame deadline of the batch scheduler: a batch goes early to meet it")
    parser.add_argument("--kv-memory", type=float, default=None, metavar="MB",
                        help="one preallocated arena (MiB) of 64 KiB pages for every session's KV caches: "
                             "idle sessions move to host memory and back on their next frame (default: none)")
    parser.add_argument("--kv-idle", type=float, default=30.0, metavar="S",
                        help="with --kv-memory: a session idle this long is offloaded (default 30)")
    add_security_arguments(parser)


def config_from_args(args: argparse.Namespace, state_key: str | None = None) -> ReconNodeConfig:
    """The node's configuration from the arguments of `add_arguments` (`state_key`: the endpoint the default
    checkpoint folder is named after; default --bind)."""
    from dataclasses import replace

    from recon.backends.flags import backend_options
    from recon.nodes.protocol import DEFAULT_LIMITS, Limits
    from recon.nodes.recon_node import ReconNodeConfig
    from recon.nodes.transport import Security

    limits = DEFAULT_LIMITS if not args.max_pixels else Limits.for_pixels(args.max_pixels)
    if args.max_message_mb:
        limits = replace(limits, max_message_bytes=int(args.max_message_mb * 2**20))
    state_dir = None if args.no_state else (args.state_dir or default_state_dir(state_key or args.bind))
    return ReconNodeConfig(bind=args.bind, publish=args.publish, control=args.control, backend=args.backend,
                           backend_options=backend_options(args, args.backend), queue_size=args.queue_size,
                           heartbeat_s=args.heartbeat, points_dtype=args.points_dtype, stride=args.stride,
                           with_image=not args.no_image, max_streams=args.max_streams,
                           max_streams_per_peer=args.max_streams_per_peer, owner_timeout_s=args.owner_timeout,
                           min_subscribers=args.wait_subscribers, session_idle_s=args.session_idle,
                           allow_remote=args.allow_remote, limits=limits,
                           max_buffered_bytes=int(args.max_buffered_mb * 2**20), state_dir=state_dir,
                           checkpoint_every=args.checkpoint_every, state_max_age_s=args.state_max_age,
                           warmup=not args.no_warmup, native_threads=args.native_threads or None,
                           security=Security.from_args(args),
                           batch_window_ms=args.batch_window_ms, batch_deadline_ms=args.batch_deadline_ms,
                           kv_memory_bytes=None if args.kv_memory is None else int(args.kv_memory * 2**20),
                           kv_idle_s=args.kv_idle)


def run(args: argparse.Namespace) -> int:
    from recon.nodes.cli_util import on_shutdown_signals
    from recon.nodes.recon_node import ReconNode
    from recon.nodes.transport import tune_allocator

    tune_allocator()  # frame buffers are reused instead of faulted in anew (recon.nodes.transport)
    node = ReconNode(config_from_args(args))
    stop = on_shutdown_signals(lambda: None, node.abort)
    node.start()
    try:
        while not stop.is_set() and not node.wait(0.2):
            pass
    finally:
        lost = node.stop()
    if lost:
        logger.error("%d result(s) lost at the forced stop", lost)
    return 1 if lost or node.failure is not None else 0


def default_state_dir(bind: str) -> str:
    """Where `recon node recon` keeps checkpoints unless told: $RECON_STATE_DIR, else under ~/.local/state/recon,
    one folder per bind endpoint (so two nodes on one machine never share, and a restart finds its own)."""
    import os
    from pathlib import Path

    root = os.environ.get("RECON_STATE_DIR")
    if root:
        return root
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "recon"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in bind)
    return str(base / safe)


def main(argv: list[str] | None = None) -> int:
    """Entry point without the full `recon` parser (`python -m recon.nodes.recon_cli`): starts faster."""
    from recon.nodes.cli_util import run_standalone

    return run_standalone("recon node recon", HELP, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
