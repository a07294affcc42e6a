"""recon.nodes: the wire protocol and the camera / reconstruction / viewer / ROS nodes (DESIGN.md §1, §6).

Modules: `protocol` (wire format v1, docs/protocol.md), `transport` (sockets, limits, CURVE), `sources`
(cameras, sequences, bags), `camera_node`, `recon_node`, `viewer_node`, `pipeline` (`run_pipeline`: the three
nodes as threads over inproc:// or as processes over tcp://), `*_cli` (`recon node KIND`), `ros/` (ROS node).

Example:
    >>> from recon.nodes import run_pipeline
    >>> from recon.sinks import TrajectoryWriter
    >>> run_pipeline("datasets/sample", "geometric", [TrajectoryWriter("out/trajectory.tum")], mode="tcp")

Names are imported on first use, so `import recon.nodes` does not import zmq.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "run_pipeline": "recon.nodes.pipeline",
    "PipelineStats": "recon.nodes.pipeline",
    "ReconNode": "recon.nodes.recon_node",
    "ReconNodeConfig": "recon.nodes.recon_node",
    "CameraNode": "recon.nodes.camera_node",
    "CameraNodeConfig": "recon.nodes.camera_node",
    "ViewerNode": "recon.nodes.viewer_node",
    "open_source": "recon.nodes.sources",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
