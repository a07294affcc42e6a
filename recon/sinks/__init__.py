"""recon.sinks: output writers that consume backend results (core side: no rerun, no zmq).

Every sink has `on_result(result)` and `close()` (`ResultSink`); `SinkGroup` fans out to several and times
them. Writers here: `TrajectoryWriter` (TUM), `PointCloudWriter` (voxel-downsampled coloured PLY); reports:
`RunSummary` (summary.json) and `compute_metrics` (metrics.json via recon.eval). The Rerun logger, the same
kind of sink, lives in `recon.viewer`. `LoopStats` counts a replay pass.
"""

from recon.sinks.base import ResultSink, SegmentedSink, SinkGroup, call_hook, segment_path
from recon.sinks.loop_stats import LoopStats
from recon.sinks.points import PointCloudWriter, PointSelection, VoxelAccumulator, auto_voxel_size, select_points
from recon.sinks.report import RunSummary, compute_metrics, write_json
from recon.sinks.trajectory import TrajectoryWriter

__all__ = [
    "LoopStats",
    "PointCloudWriter",
    "PointSelection",
    "ResultSink",
    "RunSummary",
    "SegmentedSink",
    "SinkGroup",
    "TrajectoryWriter",
    "VoxelAccumulator",
    "auto_voxel_size",
    "call_hook",
    "compute_metrics",
    "segment_path",
    "select_points",
    "write_json",
]
