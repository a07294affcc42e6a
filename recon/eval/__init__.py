"""recon.eval: trajectory, point-cloud and depth metrics, and the evaluation runner.

Trajectory metrics follow evo's definitions (cross-checked in tests); point-cloud and depth metrics follow the
VGGT-family evaluation protocols (../shared/reference/vggt_family.md §5.2). Poses are `T_world_cam` [N,4,4].
"""

from recon.eval.depth import depth_metrics
from recon.eval.pointcloud import estimate_normals, icp_refine, pointcloud_metrics
from recon.eval.runner import evaluate_run, load_trajectory
from recon.eval.trajectory import (
    ALIGN_MODES,
    Association,
    AteResult,
    EvaluationError,
    RpeResult,
    absolute_trajectory_error,
    align_trajectory,
    associate_timestamps,
    relative_pose_error,
    rpe_pairs,
    trajectory_length,
)

__all__ = [
    "ALIGN_MODES",
    "Association",
    "AteResult",
    "EvaluationError",
    "RpeResult",
    "absolute_trajectory_error",
    "align_trajectory",
    "associate_timestamps",
    "depth_metrics",
    "estimate_normals",
    "evaluate_run",
    "icp_refine",
    "load_trajectory",
    "pointcloud_metrics",
    "relative_pose_error",
    "rpe_pairs",
    "trajectory_length",
]
