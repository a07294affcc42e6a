"""Core value types that cross every boundary: frames in, results out (DESIGN.md §3-4).

Conventions relied on everywhere:
- images are `uint8 HxWx3 RGB`; intrinsics `K` are 3x3 in pixels of the image they belong to;
- camera axes are OpenCV (x right, y down, z forward); poses are `T_world_cam` (camera-to-world, 4x4);
- time is integer nanoseconds at capture (`t_ns`); every frame carries `stream_id` and a per-stream `seq`;
- depth is metres when `metric` is true, otherwise in the session's arbitrary scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from recon.errors import ConfigError

if TYPE_CHECKING:
    import torch


def _check_matrix(name: str, value: np.ndarray | None, shape: tuple[int, ...]) -> None:
    if value is not None and tuple(np.shape(value)) != shape:
        raise ConfigError(f"{name} must have shape {shape}, got {tuple(np.shape(value))}")


@dataclass
class CameraInfo:
    """Calibration of one camera stream.

    Attributes:
        width, height: image size in pixels that `K` refers to.
        K: 3x3 pinhole intrinsics (row-major, pixels).
        distortion: OpenCV distortion coefficients (k1, k2, p1, p2[, k3...]), empty for none.
        frame_id: name of the camera's optical frame (ROS / Rerun entity naming).
    """

    width: int
    height: int
    K: np.ndarray
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frame_id: str = "camera"

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64)
        self.distortion = np.asarray(self.distortion, dtype=np.float64).reshape(-1)
        _check_matrix("CameraInfo.K", self.K, (3, 3))
        if self.width <= 0 or self.height <= 0:
            raise ConfigError(f"CameraInfo size must be positive, got {self.width}x{self.height}")

    def scaled(self, width: int, height: int) -> CameraInfo:
        """Intrinsics for the same camera resampled to `width` x `height`."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        return CameraInfo(width, height, K, self.distortion.copy(), self.frame_id)


@dataclass
class Frame:
    """One captured image (optionally with depth) entering the pipeline.

    Attributes:
        stream_id: name of the camera stream.
        seq: per-stream sequence number (monotonic, starts at 0 for recorded sources).
        t_ns: capture time, integer nanoseconds.
        image: uint8 HxWx3 RGB.
        K: 3x3 intrinsics if known (None: the backend estimates or assumes them).
        depth: float32 HxW metric depth in metres (RGB-D sources), 0 where invalid.
        meta: free-form extras (source path, ground-truth pose for evaluation, ...).
    """

    stream_id: str
    seq: int
    t_ns: int
    image: np.ndarray
    K: np.ndarray | None = None
    depth: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            desc = f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}"
            raise ConfigError(f"Frame.image must be uint8 HxWx3 RGB, got {desc}")
        if self.K is not None:
            self.K = np.asarray(self.K, dtype=np.float64)
            _check_matrix("Frame.K", self.K, (3, 3))
        if self.depth is not None:
            self.depth = np.asarray(self.depth, dtype=np.float32)
            if self.depth.shape != img.shape[:2]:
                raise ConfigError(f"Frame.depth shape {self.depth.shape} does not match image {img.shape[:2]}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class ChunkLink:
    """Where a windowed backend's result comes from: its chunk (one prediction) and how the backend joined that
    chunk to the previous one over their overlap. The map layer (recon.map.odometry) weighs its odometry edges by
    it: results of one chunk share one scale exactly, a join is where scale drift enters.

    Attributes:
        index: the chunk's number (0, 1, ...); results with the same number come from one prediction.
        S_prev_chunk: 4x4 Sim(3) ([[s R, t], [0, 1]]) the backend applied to the chunk's prediction to join it to
            the previous chunk; None for the first chunk.
        support: correspondences the join was fitted on (0 when unknown).
        log_scale_sigma: standard deviation of the join's log-scale, when the backend can tell; None otherwise.
    """

    index: int
    S_prev_chunk: np.ndarray | None = None
    support: int = 0
    log_scale_sigma: float | None = None


@dataclass
class FrameResult:
    """What a backend produces for one frame (DESIGN.md §4).

    Attributes:
        stream_id, seq, t_ns: copied from the input frame.
        T_world_cam: 4x4 float64 camera-to-world pose.
        K: 3x3 intrinsics of the result's resolution (the depth / point map grid).
        depth: float32 hxw depth along the optical axis (metres if `metric`), or None.
        confidence: float32 hxw confidence (higher is better), or None.
        points_world: float32 hxwx3 points in the world frame, or None.
        metric: True when depth and translation are in metres.
        image: uint8 hxwx3 colours matching the result grid (for viewers and point clouds), or None.
        is_update: True when this result revises a pose already emitted for the same `seq`.
        tracked: False when the backend could not estimate this frame's pose (tracking lost, before
            initialisation): `T_world_cam` is then only a placeholder and sinks must not treat it as a
            measured pose (no trajectory row, no points).
        T_map_odom: with loop closure (recon.map), the map layer's newest `map <- odom` correction (4x4 Sim(3))
            when this result left the backend, so a ROS front end can publish map -> odom -> camera (REP 105)
            wherever the backend runs; None otherwise.
        chunk: for windowed backends, the chunk the result comes from and how it was joined (`ChunkLink`), for
            the map layer's odometry edges; None otherwise (not sent over the wire: the map layer wraps the
            backend where it runs).
    """

    stream_id: str
    seq: int
    t_ns: int
    T_world_cam: np.ndarray
    K: np.ndarray
    depth: np.ndarray | None = None
    confidence: np.ndarray | None = None
    points_world: np.ndarray | None = None
    metric: bool = False
    image: np.ndarray | None = None
    is_update: bool = False
    tracked: bool = True
    T_map_odom: np.ndarray | None = None
    chunk: ChunkLink | None = None

    def __post_init__(self) -> None:
        self.T_world_cam = np.asarray(self.T_world_cam, dtype=np.float64)
        self.K = np.asarray(self.K, dtype=np.float64)
        _check_matrix("FrameResult.T_world_cam", self.T_world_cam, (4, 4))
        _check_matrix("FrameResult.K", self.K, (3, 3))
        if self.T_map_odom is not None:
            self.T_map_odom = np.asarray(self.T_map_odom, dtype=np.float64)
            _check_matrix("FrameResult.T_map_odom", self.T_map_odom, (4, 4))
        if self.points_world is not None and self.points_world.shape[-1] != 3:
            raise ConfigError(f"FrameResult.points_world must be hxwx3, got {self.points_world.shape}")


@dataclass
class BackendStats:
    """Cheap snapshot of a backend's state for status reports and benchmarks.

    Attributes:
        frames_in: frames received since the last reset.
        results_out: results emitted since the last reset.
        memory_bytes: bytes held by the backend's streaming state (caches, windows, maps).
        tokens_cached: tokens held in attention caches (0 for non-transformer backends).
        timings_ms: recent mean durations by stage name.
        extra: backend-specific counters (tracking losses, keyframes, pruned tokens...).
    """

    frames_in: int = 0
    results_out: int = 0
    memory_bytes: int = 0
    tokens_cached: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """Timestamped camera-to-world poses (ground truth or estimate).

    Attributes:
        t_ns: int64 [N] timestamps in nanoseconds.
        T_world_cam: float64 [N,4,4] camera-to-world poses.
    """

    t_ns: np.ndarray
    T_world_cam: np.ndarray

    def __len__(self) -> int:
        return int(len(self.t_ns))


@dataclass
class WindowPrediction:
    """What an offline window model returns for one window (the contract of recon.align.engine.LaserEngine).

    Attributes:
        frames: global frame ids (or sequence numbers) of the window, in order.
        local_points: [n,H,W,3] camera-frame points.
        camera_poses: [n,4,4] camera-to-world poses in the window's own frame.
        conf: [n,H,W] confidence (any monotone scale: logits are fine, only quantiles are used).
    """

    frames: list[int]
    local_points: torch.Tensor
    camera_poses: torch.Tensor
    conf: torch.Tensor  # tensors: annotations only, recon.types imports no torch
