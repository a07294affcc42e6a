"""`recon node KIND`: run one node of the distributed service as its own process."""

from __future__ import annotations

import argparse

from recon.commands import add_command_table

HELP = "run one node: camera, recon, viewer or ros"

# Node kind -> module with HELP, add_arguments(parser) and run(args) -> int.
NODES: dict[str, str] = {
    "camera": "recon.nodes.camera_cli",
    "recon": "recon.nodes.recon_cli",
    "viewer": "recon.nodes.viewer_cli",
    "ros": "recon.nodes.ros.cli",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_command_table(parser, NODES, "node", "_node_run", "NODE")


def run(args: argparse.Namespace) -> int:
    return int(args._node_run(args) or 0)
