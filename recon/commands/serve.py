"""`recon serve`: the reconstruction service; with `--ray`, many workers on a Ray cluster behind one front endpoint.

Examples:
    recon serve --backend geometric                        # one node, as `recon node recon`
    recon serve --ray --state-dir /shared/recon            # a local Ray instance (or $RAY_ADDRESS), a worker per GPU
    recon serve --ray 10.0.0.1:6379 --front tcp://0.0.0.0:5550 --allow-remote --state-dir /nfs/recon
    recon serve --ray --state-dir /shared/recon --min-workers 1 --max-workers 4 --streams-per-worker 6
    recon node camera --source 0 --front tcp://127.0.0.1:5550 --stream-id desk   # asks the front where to stream

With `--ray`, Ray is the control plane (recon.nodes.ray_serve): one reconstruction worker actor per GPU (or
`--workers` on CPU), stream placement, health checks and moving a dead worker's streams to a live one, which
restores them from the checkpoints in `--state-dir` (shared by every worker), and a new worker for the dead one.
Frames and results stay on ZeroMQ: cameras stream straight to their worker; subscribers connect to every worker's
results endpoint (`--front` answers `workers`; `recon node viewer --connect A,B,...` takes several).
`--min-workers N` scales instead of a fixed count: a worker more (up to `--max-workers`, capped at the GPUs) while
the streams per worker exceed `--streams-per-worker`, and a worker without streams for `--idle-grace` seconds
retired (drained, down to N); running streams are never moved by scaling.
The other options are those of `recon node recon` and apply to every worker.
"""

from __future__ import annotations

import argparse
import logging

HELP = "the reconstruction service: one node, or many workers on a Ray cluster (--ray)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recon.nodes.recon_cli import add_arguments as add_node_arguments

    add_node_arguments(parser)
    parser.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                        help="run the workers on a Ray cluster (ADDRESS; default: $RAY_ADDRESS or a local instance)")
    parser.add_argument("--front", default="tcp://127.0.0.1:5550",
                        help="with --ray: the endpoint cameras ask where their stream lives")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="with --ray: number of workers (default: one per GPU, else one per CPU)")
    parser.add_argument("--min-workers", type=int, default=None, metavar="N",
                        help="with --ray: scale the workers with the streams, from N (instead of --workers)")
    parser.add_argument("--max-workers", type=int, default=None, metavar="N",
                        help="with --min-workers: at most N workers (default and cap on GPUs: one per GPU)")
    parser.add_argument("--streams-per-worker", type=float, default=4.0, metavar="K",
                        help="with --min-workers: add a worker when the streams per worker exceed K (default 4)")
    parser.add_argument("--idle-grace", type=float, default=60.0, metavar="S",
                        help="with --min-workers: retire a worker without streams for S seconds (default 60)")
    parser.add_argument("--health", type=float, default=0.5, metavar="S", help="with --ray: health check period")
    parser.add_argument("--dead-after", type=float, default=10.0, metavar="S",
                        help="with --ray: a worker whose health ping is unanswered this long is declared dead, "
                             "killed and replaced (one Ray reports dead is replaced at once)")
    parser.add_argument("--no-replace", action="store_true",
                        help="with --ray: do not start a new worker for a dead one (its streams move either way)")


def run(args: argparse.Namespace) -> int:
    from recon.nodes import recon_cli

    if args.ray is None:
        return recon_cli.run(args)
    import ray

    from recon.errors import ConfigError
    from recon.nodes.cli_util import on_shutdown_signals
    from recon.nodes.ray_serve import RayService, Scaling, check_dead_after
    from recon.nodes.transport import check_bind

    check_bind(args.front, args.allow_remote)
    check_dead_after(args.dead_after)  # refused before a Ray cluster is started or joined
    ray.init(address=None if args.ray == "auto" else args.ray)
    scaling = None
    if args.min_workers is not None:
        resources = ray.cluster_resources()
        top = args.max_workers or int(resources.get("GPU", 0)) or max(1, int(resources.get("CPU", 1)))
        scaling = Scaling(args.min_workers, top, args.streams_per_worker, args.idle_grace)
    elif args.max_workers is not None:
        raise ConfigError("--max-workers needs --min-workers (a fixed count is --workers)")
    service = RayService(recon_cli.config_from_args(args, state_key=args.front), args.front, workers=args.workers,
                         health_s=args.health, dead_after_s=args.dead_after, replace_dead=not args.no_replace,
                         scaling=scaling).start()
    stop = on_shutdown_signals(lambda: None)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        lost = service.stop()
    if lost:
        logger.error("%d result(s) lost at the forced stop", lost)
    return 1 if lost else 0
