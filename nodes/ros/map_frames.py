"""ROS-independent pieces for publishing loop-closure corrections the ROS way (REP 105), kept apart from the
node so whichever ROS adapter runs can use them.

With `recon.map` on, results are in the `map` frame and the backend's own poses are odometry: `odom -> camera`
is continuous (it never jumps), `map -> odom` is the correction that jumps when a loop closes. This module turns
the map layer's state into those two transforms and keeps the corrected path (`nav_msgs/Path`: every frame's
latest pose, revisions included), so an adapter only copies numbers into messages.

A Sim(3) correction (monocular and up-to-scale maps) has a scale that a TF transform cannot carry: the
rigid part is published, and the scale is returned so the adapter can log or publish it beside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recon.geometry import Sim3, rotmat_to_quat_xyzw
from recon.types import FrameResult


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


@dataclass
class CorrectedPath:
    """The stream's path in the map frame, with revisions (`is_update`) replacing earlier poses of the same seq.

    `changed` says whether a revision of an older pose arrived since the last `poses()` (then the whole path
    must be re-published; otherwise appending the newest pose is enough).
    """

    _poses: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)
    changed: bool = False

    def on_result(self, result: FrameResult) -> None:
        if not result.tracked:
            return
        if result.is_update and result.seq in self._poses:
            self.changed = True
        self._poses[int(result.seq)] = (int(result.t_ns), np.array(result.T_world_cam, np.float64))

    def poses(self) -> list[tuple[int, np.ndarray]]:
        """(stamp_ns, T_map_cam) by seq."""
        self.changed = False
        return [self._poses[s] for s in sorted(self._poses)]
