"""`recon node KIND`: run one node of the distributed service as its own process."""

from __future__ import annotations

import argparse
import importlib

HELP = "run one node: camera, recon, viewer or ros"

# Node kind -> module with HELP, add_arguments(parser) and run(args) -> int.
NODES: dict[str, str] = {
    "camera": "recon.nodes.camera_cli",
    "recon": "recon.nodes.recon_cli",
    "viewer": "recon.nodes.viewer_cli",
    "ros": "recon.nodes.ros.cli",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="node", metavar="NODE", required=True)
    for name, module_name in NODES.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_node_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._node_run(args) or 0)
