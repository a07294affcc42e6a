"""Open3D's own RGB-D trackers, run on recon's frames as anchors for the geometric backend's benchmark.

Why here: the issue asks for figures "beside the anchors, measured in one run", so the benchmark runs the peers
itself on the same in-memory frames, machine and load instead of quoting numbers from elsewhere.

- `open3d_dense_slam`: the tensor dense RGB-D SLAM (`o3d.t.pipelines.slam.Model`: frame-to-model tracking
  against a TSDF voxel-block grid ray-cast at the last pose), the loop of Open3D's
  `examples/python/t_reconstruction_system/dense_slam.py` with that example's defaults except the depth range.
- `open3d_rgbd_odometry`: frame-to-frame `o3d.t.pipelines.odometry.rgbd_odometry_multi_scale` (hybrid
  photometric + geometric terms), each frame aligned to the previous one and the motions chained.

Both run on the CPU device, as on the 2-core machine the benchmark targets. A frame whose tracking raises or
returns a non-finite transform keeps the previous pose and counts as not tracked (nothing is dropped).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from recon.types import Frame
from recon.utils.imports import require_package

logger = logging.getLogger(__name__)

DEPTH_SCALE = 5000.0  # depth is handed to Open3D as uint16 in TUM units, as its examples read PNGs


@dataclass
class AnchorRun:
    """Poses [N,4,4] (camera to world, world = first camera), a tracked flag per frame, wall time."""

    name: str
    T_world_cam: np.ndarray
    tracked: np.ndarray
    seconds: float
    settings: dict[str, float | str] = field(default_factory=dict)


def _depth_u16(depth: np.ndarray) -> np.ndarray:
    d = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    return np.clip(np.round(d * DEPTH_SCALE), 0, 65535).astype(np.uint16)


def open3d_dense_slam(frames: list[Frame], *, voxel_size: float = 3.0 / 512, depth_max: float = 5.0,
                      depth_min: float = 0.1, block_count: int = 40000, odometry_distance_thr: float = 0.07,
                      trunc_voxel_multiplier: float = 8.0) -> AnchorRun:
    """Open3D's frame-to-model dense SLAM over RGB-D frames (defaults: its dense_slam.py example, depth to 5 m)."""
    o3d = require_package("open3d")
    o3c = o3d.core
    device = o3c.Device("CPU:0")
    first = frames[0]
    K = o3c.Tensor(np.asarray(first.K, dtype=np.float64))
    T = np.eye(4)
    model = o3d.t.pipelines.slam.Model(voxel_size, 16, block_count, o3c.Tensor(T), device)
    h, w = first.image.shape[:2]
    input_frame = o3d.t.pipelines.slam.Frame(h, w, K, device)
    raycast_frame = o3d.t.pipelines.slam.Frame(h, w, K, device)
    poses, tracked = [], []
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        input_frame.set_data_from_image("depth", o3d.t.geometry.Image(o3c.Tensor(_depth_u16(f.depth))))
        input_frame.set_data_from_image("color", o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.image))))
        ok = True
        if i > 0:
            try:
                res = model.track_frame_to_model(input_frame, raycast_frame, DEPTH_SCALE, depth_max,
                                                 odometry_distance_thr)
                step = res.transformation.numpy()
                ok = bool(np.all(np.isfinite(step)))
                if ok:
                    T = T @ step
            except RuntimeError as e:  # too few correspondences
                logger.debug("open3d dense SLAM: frame %d not tracked: %s", i, e)
                ok = False
        poses.append(T.copy())
        tracked.append(ok)
        model.update_frame_pose(i, o3c.Tensor(T))
        model.integrate(input_frame, DEPTH_SCALE, depth_max, trunc_voxel_multiplier)
        model.synthesize_model_frame(raycast_frame, DEPTH_SCALE, depth_min, depth_max, trunc_voxel_multiplier,
                                     False)
    seconds = time.perf_counter() - t0
    return AnchorRun("open3d dense SLAM", np.stack(poses), np.asarray(tracked), seconds,
                     dict(voxel_size=voxel_size, depth_max=depth_max, block_count=block_count,
                          odometry_distance_thr=odometry_distance_thr))


def open3d_rgbd_odometry(frames: list[Frame], *, depth_max: float = 5.0, method: str = "hybrid",
                         iterations: tuple[int, ...] = (20, 10, 5)) -> AnchorRun:
    """Open3D frame-to-frame multi-scale RGB-D odometry, chained (its defaults, hybrid method, depth to 5 m)."""
    o3d = require_package("open3d")
    o3c = o3d.core
    odo = o3d.t.pipelines.odometry
    methods = {"hybrid": odo.Method.Hybrid, "point_to_plane": odo.Method.PointToPlane,
               "intensity": odo.Method.Intensity}
    criteria = [odo.OdometryConvergenceCriteria(int(n)) for n in iterations]
    K = o3c.Tensor(np.asarray(frames[0].K, dtype=np.float64))

    def rgbd(f: Frame):
        color = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.image, dtype=np.float32) / 255.0))
        depth = o3d.t.geometry.Image(o3c.Tensor(_depth_u16(f.depth)))
        return o3d.t.geometry.RGBDImage(color, depth)

    T = np.eye(4)
    step = np.eye(4)
    poses, tracked = [T.copy()], [True]
    t0 = time.perf_counter()
    prev = rgbd(frames[0])
    for i, f in enumerate(frames[1:], start=1):
        cur = rgbd(f)
        ok = True
        try:
            res = odo.rgbd_odometry_multi_scale(cur, prev, K, o3c.Tensor(step), DEPTH_SCALE, depth_max, criteria,
                                                methods[method])
            new = res.transformation.numpy().astype(np.float64)
            ok = bool(np.all(np.isfinite(new)))
        except RuntimeError as e:
            logger.debug("open3d RGB-D odometry: frame %d not tracked: %s", i, e)
            ok = False
        if ok:
            step = new  # T_prev_cur, also the next frame's initial guess (constant velocity)
            T = T @ step
        poses.append(T.copy())
        tracked.append(ok)
        prev = cur
    seconds = time.perf_counter() - t0
    return AnchorRun("open3d RGB-D odometry", np.stack(poses), np.asarray(tracked), seconds,
                     dict(depth_max=depth_max, method=method))
