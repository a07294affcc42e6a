"""What every export shares: final camera per frame (updates applied, untracked frames left out), the map's points,
folder names per stream, image files.

Exports see results in emission order, like every sink: a later result for the same (stream, seq) with
`is_update` replaces the pose; a result with `tracked == False` has no pose, so it is left out (and removes a frame
that an update declared lost). Streams are separate sessions with their own world frames, so multi-stream runs get
one output per stream (`<out>/<stream>/...`); a single stream writes straight into `<out>`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.sinks.points import (
    DEFAULT_SELECTION,
    PointSelection,
    RevisableCloud,
    auto_voxel_size,
    result_points_hw3,
    select_points,
)
from recon.types import FrameResult

logger = logging.getLogger(__name__)


def safe_name(stream_id: str) -> str:
    """A file-name-safe form of a stream id (used for sub-folders and file stems)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stream_id) or "stream"


def frame_stem(seq: int) -> str:
    return f"{int(seq):06d}"


@dataclass
class FrameCamera:
    """The final camera of one frame: pose, intrinsics of the result grid, size, and what else was kept."""

    stream_id: str
    seq: int
    t_ns: int
    T_world_cam: np.ndarray
    K: np.ndarray
    width: int
    height: int
    metric: bool
    image: str | None = None  # path of the frame's colour image, relative to the export folder
    depth: str | None = None  # path of its depth map, relative to the export folder


class CameraLog:
    """Final cameras of every frame, per stream in arrival order (see the module doc for the update rules)."""

    def __init__(self) -> None:
        self._frames: dict[str, dict[int, FrameCamera]] = {}
        self.updates = 0
        self.untracked = 0

    def add(self, result: FrameResult) -> FrameCamera | None:
        """Record `result`; returns the frame's camera, or None when the result carries no pose."""
        frames = self._frames.setdefault(result.stream_id, {})
        if not result.tracked:
            self.untracked += 1
            frames.pop(result.seq, None)
            return None
        hw = _grid_hw(result)
        cam = frames.get(result.seq)
        if cam is None:
            if hw is None:
                return None
            cam = frames[result.seq] = FrameCamera(result.stream_id, result.seq, int(result.t_ns),
                                                   result.T_world_cam.copy(), result.K.copy(), hw[1], hw[0],
                                                   bool(result.metric))
            return cam
        self.updates += 1
        cam.T_world_cam = result.T_world_cam.copy()
        cam.K = result.K.copy()
        if hw is not None:
            cam.height, cam.width = hw
        return cam

    @property
    def stream_ids(self) -> list[str]:
        return [s for s, frames in self._frames.items() if frames]

    def frames(self, stream_id: str) -> list[FrameCamera]:
        """The stream's tracked frames in seq order."""
        frames = self._frames.get(stream_id, {})
        return [frames[s] for s in sorted(frames)]

    def __len__(self) -> int:
        return sum(len(f) for f in self._frames.values())

    def stream_dir(self, out: Path, stream_id: str) -> Path:
        """Where a stream's output goes: `out` for a single-stream run, `out/<stream>` otherwise."""
        return out if len(self._frames) <= 1 else out / safe_name(stream_id)


def _grid_hw(result: FrameResult) -> tuple[int, int] | None:
    for arr in (result.depth, result.points_world, result.image, result.confidence):
        if arr is not None:
            return int(np.shape(arr)[0]), int(np.shape(arr)[1])
    return None


class MapPoints:
    """The map's voxel-downsampled coloured points per stream, for exports that carry a point cloud (COLMAP
    points3D, nerfstudio's initial cloud): the selection, voxel rule and revisions of points.ply
    (`recon.sinks.points.RevisableCloud`: a pose-only revision moves the frame's points, a revision with points
    replaces them), untracked results adding nothing."""

    def __init__(self, *, voxel_size: float | None = None, selection: PointSelection = DEFAULT_SELECTION) -> None:
        self.voxel_size = voxel_size
        self.selection = selection
        self._maps: dict[str, RevisableCloud] = {}

    def add(self, result: FrameResult) -> None:
        if not result.tracked:
            return
        acc = self._maps.get(result.stream_id)
        if result.is_update and result_points_hw3(result) is None:
            if acc is not None:
                acc.move(result.seq, result.T_world_cam)
            return
        if acc is None:
            voxel = self.voxel_size or auto_voxel_size(result)
            if voxel is None:
                return
            acc = self._maps[result.stream_id] = RevisableCloud(voxel)
        acc.put(result.seq, result.T_world_cam, *select_points(result, self.selection))

    def points(self, stream_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(xyz float64 [N,3], rgb uint8 [N,3]) of one stream's map (empty when it has none)."""
        acc = self._maps.get(stream_id)
        if acc is None:
            return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
        xyz, rgb = acc.points()
        return xyz, np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)

    def write_ply(self, stream_id: str, path: Path) -> int:
        """Write one stream's map as a binary PLY with colours; returns the point count (0: nothing written)."""
        import open3d as o3d

        xyz, rgb = self.points(stream_id)
        if len(xyz) == 0:
            return 0
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
        pcd.colors = o3d.utility.Vector3dVector(rgb / 255.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not o3d.io.write_point_cloud(str(path), pcd, write_ascii=False):
            raise OSError(f"open3d could not write {path}")
        return len(xyz)


def write_rgb(path: Path, image_hw3: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an RGB uint8 image (JPEG for .jpg, else the suffix's lossless format), creating the folder."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image_hw3), cv2.COLOR_RGB2BGR), params):
        raise OSError(f"cannot write image {path}")


def write_depth_mm(path: Path, depth_hw: np.ndarray) -> int:
    """Write metric depth as a 16-bit PNG in millimetres (0 = none); returns how many pixels beyond 65.535 m were
    set to 0."""
    import cv2

    d = np.nan_to_num(np.asarray(depth_hw, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    mm = np.round(d * 1000.0)
    far = int(np.count_nonzero(mm > 65535))
    mm[(mm > 65535) | (mm < 0)] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), mm.astype(np.uint16)):
        raise OSError(f"cannot write depth {path}")
    return far


def read_depth_mm(path: Path) -> np.ndarray:
    """float32 metres from a 16-bit millimetre PNG written by `write_depth_mm`."""
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
        raise OSError(f"{path}: expected a 16-bit single-channel depth PNG")
    return raw.astype(np.float32) / 1000.0


def relocate(written: Path, final: Path) -> None:
    """Move a file written before the run's stream count was known (one stream -> `out/`, several -> per-stream
    folders) to where it belongs."""
    if written == final or not written.exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    written.replace(final)
