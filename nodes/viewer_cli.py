"""`recon node viewer`: subscribe to a reconstruction node's results; draw them and/or record them.

Examples:
    recon node viewer --connect tcp://127.0.0.1:5556 --viewer rrd:run.rrd
    recon node viewer --connect tcp://127.0.0.1:5556 --viewer web
    recon node viewer --connect tcp://127.0.0.1:5556 --viewer connect:rerun+http://127.0.0.1:9876/proxy
    recon node viewer --connect tcp://127.0.0.1:5556 --record runs/live     # trajectory.tum + points.ply
"""

from __future__ import annotations

import argparse
import logging

from recon.nodes.transport import add_security_arguments

HELP = "viewer node: subscribe to results and log them to Rerun and/or record TUM/PLY files"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", default="tcp://127.0.0.1:5556",
                        help="results endpoint of the node (several nodes, e.g. the workers of recon serve --ray: "
                             "comma-separated)")
    parser.add_argument("--viewer", default=None, metavar="rrd:PATH|web|connect:URL",
                        help="Rerun sink (recon.viewer): an .rrd file, the web viewer, or a running viewer")
    parser.add_argument("--record", default=None, metavar="DIR",
                        help="write DIR/trajectory.tum (one per stream) and DIR/points.ply")
    parser.add_argument("--no-ply", action="store_true", help="with --record: trajectory only")
    parser.add_argument("--summary", default=None, metavar="FILE", help="write counters as JSON on exit")
    add_security_arguments(parser)


def make_viewer_sink(spec: str) -> object | None:
    """The recon.viewer Rerun sink for `rrd:PATH`, `web`, `connect:URL` (one subtree per stream)."""
    from recon.viewer import create_rerun_sink

    return create_rerun_sink(spec, default_rrd="recording.rrd")


def make_sinks(args: argparse.Namespace) -> list[object]:
    from pathlib import Path

    from recon.errors import ConfigError

    sinks: list[object] = []
    if args.viewer:
        sink = make_viewer_sink(args.viewer)
        if sink is not None:
            sinks.append(sink)
    if args.record:
        from recon.sinks import PointCloudWriter, SegmentedSink, TrajectoryWriter, segment_path

        # One file per world segment: a stream whose world frame changes (a reset, a restart that could not be
        # restored) continues in trajectory.seg1.tum, never in the same file.
        out = Path(args.record)
        sinks.append(SegmentedSink(lambda k: TrajectoryWriter(segment_path(out / "trajectory.tum", k))))
        if not args.no_ply:
            sinks.append(SegmentedSink(lambda k: PointCloudWriter(segment_path(out / "points.ply", k))))
    if not sinks:
        raise ConfigError("nothing to do: pass --viewer and/or --record")
    return sinks


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from recon.nodes.cli_util import on_shutdown_signals
    from recon.nodes.transport import Security, tune_allocator
    from recon.nodes.viewer_node import ViewerNode

    tune_allocator()  # frame buffers are reused instead of faulted in anew (recon.nodes.transport)
    node = ViewerNode(args.connect, make_sinks(args), security=Security.from_args(args))
    stop = on_shutdown_signals(lambda: None)
    node.start()
    try:
        while not stop.wait(0.2):
            if node.error is not None:
                break
    finally:
        node.stop()
        st = node.stats
        logger.info("viewer: %d results (%d duplicates dropped, %d updates), per stream %s, sink errors %s, "
                    "latency %s", st.results, st.duplicates, st.updates, st.per_stream, st.sink_errors or "none",
                    {sid: v["publish"].get("p50") for sid, v in st.latency.items()})
        if args.summary:
            summary = {**asdict(st), "rejected": node.rejects.counts}
            Path(args.summary).write_text(json.dumps(summary, indent=1))
    return 1 if node.error is not None or node.stats.sink_errors else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point without the full `recon` parser (`python -m recon.nodes.viewer_cli`): starts faster."""
    from recon.nodes.cli_util import run_standalone

    return run_standalone("recon node viewer", HELP, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
