"""Run reports: the summary JSON every run writes and the metrics JSON written when ground truth exists."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon.types import Trajectory

logger = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays to Python, NaN/inf to null (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write `data` as indented JSON atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


@dataclass
class RunSummary:
    """What a run did, written as summary.json.

    Attributes:
        sequence: sequence name; backend / backend_reason: which backend ran and why it was chosen.
        frames_in: frames given to the backend; results_out: results emitted (updates included).
        frames_skipped / skipped_paths: corrupt or missing frames the reader skipped (`--on-error skip`).
        wall_s: seconds from the first frame read to the sinks closed; fps: frames_in / wall_s.
        timings_s: seconds spent per stage (read, backend, and each sink).
        stopped_on_error: the error message when the run stopped early, else None.
        results_lost: results that never reached the outputs (a forced stop, a failing sink); a run that
            loses any exits non-zero.
        latency_ms: per stream, capture-to-publish latency over the node's last window ({n, p50, p95, p99, max}).
        streams: per stream counters of the node and camera (frames, drops at camera and node, refusals).
        outputs: output name -> path; backend_stats: the backend's own counters at the end.
    """

    sequence: str
    backend: str
    backend_reason: str = ""
    frames_in: int = 0
    results_out: int = 0
    frames_skipped: int = 0
    skipped_paths: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    fps: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)
    stopped_on_error: str | None = None
    results_lost: int = 0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    backend_stats: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def write(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())


def compute_metrics(pred: Trajectory, gt: Trajectory, *, metric: bool) -> dict[str, Any]:
    """Trajectory metrics of a run against ground truth via `recon.eval.evaluate_run`.

    Metric-scale runs are aligned with SE(3); up-to-scale runs with Sim(3) (the usual protocol for monocular
    methods), and the choice is recorded in the result.
    """
    from recon.eval import evaluate_run

    return evaluate_run(pred, gt, align="se3" if metric else "sim3")
