"""recon.viewer: Rerun logging, blueprint and sinks (.rrd file, live gRPC viewer, web viewer).

`recon.viewer.spec` (the `--viewer` parser and `APPLICATION_ID`) imports no rerun; everything else is
loaded on first use, so `import recon.viewer` stays cheap for argument parsing.

Example:
    >>> from recon.viewer import create_rerun_sink
    >>> sink = create_rerun_sink("rrd:out/recording.rrd", stream_ids=["cam0"])
    >>> for result in results: sink.on_result(result)
    >>> sink.close()
"""

from __future__ import annotations

import importlib
from typing import Any

from recon.viewer.spec import APPLICATION_ID, KINDS, ViewerSpec, parse_viewer_spec

_LAZY = {
    "RerunLogger": "recon.viewer.logger",
    "TIMELINE_SEQ": "recon.viewer.logger",
    "TIMELINE_TIME": "recon.viewer.logger",
    "build_blueprint": "recon.viewer.blueprint",
    "stream_root": "recon.viewer.blueprint",
    "RerunOutput": "recon.viewer.output",
    "RerunSink": "recon.viewer.output",
    "open_recording": "recon.viewer.output",
    "create_rerun_sink": "recon.viewer.output",
}

__all__ = ["APPLICATION_ID", "KINDS", "ViewerSpec", "parse_viewer_spec", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
