"""ROS-independent pieces for publishing loop-closure corrections the ROS way (REP 105), kept apart from the
node so whichever ROS adapter runs can use them.

With `recon.map` on, results are in the `map` frame and the backend's own poses are odometry: `odom -> camera`
is continuous (it never jumps), `map -> odom` is the correction that jumps when a loop closes. This module turns
the map layer's state into those two transforms (the node's ~path is the corrected path: its `PathBuffer`
replaces a frame's pose when the map layer re-emits it), so an adapter only copies numbers into messages.

A Sim(3) correction (monocular and up-to-scale maps) has a scale that a TF transform cannot carry: the
rigid part is published, and the scale is returned so the adapter can log or publish it beside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.geometry import Sim3, rotmat_to_quat_xyzw


@dataclass(frozen=True)
class TransformParts:
    """What a geometry_msgs/Transform holds: translation xyz and rotation quaternion xyzw; `scale` beside it."""

    translation: np.ndarray
    rotation_xyzw: np.ndarray
    scale: float = 1.0


def map_to_odom(T_map_odom: np.ndarray) -> TransformParts:
    """The `map -> odom` TF from the map layer's correction (a 4x4 Sim(3) matrix, `MappedBackend.T_map_odom`)."""
    S = Sim3.from_matrix(np.asarray(T_map_odom, np.float64))
    return TransformParts(S.t.copy(), rotmat_to_quat_xyzw(S.R), S.s)


def tf_chain(T_map_cam: np.ndarray, T_map_odom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two TFs the node publishes for a corrected pose: `map -> odom` (the correction's rigid part) and
    `odom -> camera`, chosen so that their product is `T_map_cam` exactly (what tf consumers look up). With an
    SE(3) correction `odom -> camera` is the backend's own odometry (`odom_pose`); with a Sim(3) one it is in
    map units, since TF cannot carry the scale (it then jumps with the scale when a loop closes)."""
    S = Sim3.from_matrix(np.asarray(T_map_odom, np.float64))
    rigid = np.eye(4)
    rigid[:3, :3], rigid[:3, 3] = S.R, S.t
    return rigid, np.linalg.solve(rigid, np.asarray(T_map_cam, np.float64))


def odom_pose(T_map_cam: np.ndarray, T_map_odom: np.ndarray) -> np.ndarray:
    """`odom -> camera` from a corrected pose: the inverse correction applied to it (continuous odometry)."""
    return Sim3.from_matrix(np.asarray(T_map_odom, np.float64)).inverse().apply_poses(np.asarray(T_map_cam))
