"""`recon bench NAME`: benchmarks (not tests) that print measured figures and ratios."""

from __future__ import annotations

import argparse

from recon.commands import add_command_table

HELP = ("run a benchmark (geometric, transport, live, model, memory, laser, horizonstream, lingbot, loop, serve, "
        "failover)")

# Benchmark name -> module with HELP, add_arguments(parser) and run(args) -> int.
BENCHMARKS: dict[str, str] = {
    "geometric": "recon.commands.bench_geometric",
    "transport": "recon.commands.bench_transport",
    "live": "recon.commands.bench_live",
    "model": "recon.commands.bench_model",
    "memory": "recon.commands.bench_memory",
    "laser": "recon.commands.bench_laser",
    "horizonstream": "recon.commands.bench_horizonstream",
    "lingbot": "recon.commands.bench_lingbot",
    "loop": "recon.commands.bench_loop",
    "serve": "recon.commands.bench_serve",
    "failover": "recon.commands.bench_failover",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_command_table(parser, BENCHMARKS, "benchmark", "_bench_run", "BENCHMARK")


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
