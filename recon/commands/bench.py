"""`recon bench NAME`: benchmarks (not tests) that print measured figures and ratios."""

from __future__ import annotations

import argparse
import importlib

HELP = "run a benchmark (geometric, transport, model, memory, laser, horizonstream)"

# Benchmark name -> module with HELP, add_arguments(parser) and run(args) -> int.
BENCHMARKS: dict[str, str] = {
    "geometric": "recon.commands.bench_geometric",
    "transport": "recon.commands.bench_transport",
    "model": "recon.commands.bench_model",
    "memory": "recon.commands.bench_memory",
    "laser": "recon.commands.bench_laser",
    "horizonstream": "recon.commands.bench_horizonstream",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
