"""recon.geometry: rigid and similarity transforms, alignment, camera projection.

Conventions: `T_a_b` maps points in frame b to frame a; quaternions are stored **xyzw (scalar last)**,
as scipy, ROS and Rerun store them (VGGT's pose encoding uses the same order).
"""

from recon.geometry.camera import backproject_depth, depth_to_world_points, project_points
from recon.geometry.transforms import (
    apply_transform,
    compose_se3,
    inv_se3,
    make_se3,
    quat_xyzw_to_rotmat,
    rotmat_to_quat_xyzw,
)

__all__ = [
    "apply_transform",
    "backproject_depth",
    "compose_se3",
    "depth_to_world_points",
    "inv_se3",
    "make_se3",
    "project_points",
    "quat_xyzw_to_rotmat",
    "rotmat_to_quat_xyzw",
]
