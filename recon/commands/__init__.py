"""CLI subcommands (one module each). This layer may use `recon.nodes` and `recon.viewer`; core may not.

A command module exposes `HELP`, `add_arguments(parser)` and `run(args) -> int`. `recon`, `recon bench` and
`recon node` each dispatch through a table of such modules with `add_command_table`.
"""

from __future__ import annotations

import argparse
import importlib


def add_command_table(parser: argparse.ArgumentParser, table: dict[str, str], dest: str, run_attr: str,
                      metavar: str, required: bool = True) -> None:
    """One subparser per "name -> module" entry; the chosen module's `run` is stored as `args.<run_attr>`."""
    sub = parser.add_subparsers(dest=dest, metavar=metavar, required=required)
    for name, module_name in table.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(**{run_attr: module.run})
