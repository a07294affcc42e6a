"""The counters of one replay pass (`recon replay`, in-process or distributed), which the run summary reports.

The pass itself runs through the node classes (recon.nodes.pipeline); this module only holds what it counts, so
the summary and the sinks need not import the nodes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class LoopStats:
    """Counters of one pass over a source.

    `results_lost`: results that did not reach the sinks (a forced stop, a sink that failed on them);
    `node_status`: the reconstruction node's status at the end when the pass ran through the nodes.
    """

    frames_in: int = 0
    frames_dropped_by_stride: int = 0
    results_out: int = 0
    metric: bool | None = None
    wall_s: float = 0.0
    timings_s: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "backend": 0.0, "sinks": 0.0})
    stopped_on_error: str | None = None
    results_lost: int = 0
    node_status: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames_in / self.wall_s if self.wall_s > 0 else 0.0
