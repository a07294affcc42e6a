"""recon.geometry: rigid and similarity transforms, alignment, camera projection.

Conventions: `T_a_b` maps points in frame b to frame a; poses are `T_world_cam`; quaternions are stored
**xyzw (scalar last)**, as scipy, ROS and Rerun store them (VGGT's pose encoding uses the same order). Libraries
that want wxyz (evo, PyTorch3D) get it through `quat_xyzw_to_wxyz` at the call site. Twists are (rho, omega),
translation first.
"""

from recon.geometry.camera import backproject_depth, depth_to_world_points
from recon.geometry.sim3 import Sim3
from recon.geometry.transforms import (
    GeometryError,
    apply_transform,
    compose_se3,
    hat,
    inv_se3,
    is_rotation,
    make_se3,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_rotmat,
    quat_xyzw_to_wxyz,
    rotation_angle,
    rotmat_to_quat_xyzw,
    se3_exp,
    se3_log,
    so3_exp,
    so3_log,
)
from recon.geometry.umeyama import umeyama

__all__ = [
    "GeometryError",
    "Sim3",
    "apply_transform",
    "backproject_depth",
    "compose_se3",
    "depth_to_world_points",
    "hat",
    "inv_se3",
    "is_rotation",
    "make_se3",
    "quat_wxyz_to_xyzw",
    "quat_xyzw_to_rotmat",
    "quat_xyzw_to_wxyz",
    "rotation_angle",
    "rotmat_to_quat_xyzw",
    "se3_exp",
    "se3_log",
    "so3_exp",
    "so3_log",
    "umeyama",
]
