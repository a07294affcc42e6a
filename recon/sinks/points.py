"""Point selection shared by every point output, and the voxel-downsampled coloured PLY writer.

`select_points` turns one result's point map into a bounded, confidence-filtered, coloured point set; the
Rerun logger and the PLY writer both use it, so what you see live is what lands on disk. `VoxelAccumulator`
keeps the union of all frames bounded: new points are buffered and merged into a fixed voxel grid
(positions and colours averaged per voxel) whenever the buffer fills, so memory grows with the scene's volume,
not with the number of frames; open3d writes the PLY.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import ConfigError
from recon.geometry.camera import depth_to_world_points
from recon.geometry.transforms import inv_se3
from recon.types import FrameResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointSelection:
    """How to thin one point map.

    Attributes:
        stride: keep every `stride`-th row and column of the result grid.
        conf_quantile: drop the lowest-confidence fraction of valid points (0 keeps all); per frame, so it adapts
            to each backend's confidence scale.
        min_confidence: absolute confidence floor (None: none).
        max_points: cap per frame after filtering (evenly spaced, deterministic); None: no cap.
    """

    stride: int = 1
    conf_quantile: float = 0.0
    min_confidence: float | None = None
    max_points: int | None = 50_000

    def __post_init__(self) -> None:
        if int(self.stride) < 1:
            raise ConfigError(f"PointSelection.stride must be >= 1, got {self.stride!r}")
        if not 0.0 <= self.conf_quantile < 1.0:
            raise ConfigError(f"PointSelection.conf_quantile must be in [0, 1), got {self.conf_quantile!r}")
        if self.max_points is not None and int(self.max_points) < 1:
            raise ConfigError(f"PointSelection.max_points must be >= 1 or None, got {self.max_points!r}")


# The default thinning of both the live view and the PLY: every 2nd pixel, the 10% least confident dropped.
DEFAULT_SELECTION = PointSelection(stride=2, conf_quantile=0.1, max_points=50_000)


def _resample_nearest(img_hwc: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize by index sampling (colour images given at another resolution than points)."""
    rows = np.minimum((np.arange(h) + 0.5) * img_hwc.shape[0] / h, img_hwc.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(w) + 0.5) * img_hwc.shape[1] / w, img_hwc.shape[1] - 1).astype(np.intp)
    return img_hwc[rows][:, cols]


def result_points_hw3(result: FrameResult) -> np.ndarray | None:
    """World points hxwx3 of a result: its point map, else its depth back-projected, else None."""
    if result.points_world is not None:
        return np.asarray(result.points_world)
    if result.depth is not None:
        return depth_to_world_points(np.asarray(result.depth), result.K, result.T_world_cam)
    return None


def select_points(result: FrameResult, selection: PointSelection = PointSelection()
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Valid, confidence-filtered, subsampled points of one result.

    Returns (xyz float32 [N,3] in the world frame, rgb uint8 [N,3] or None when the result has no image).
    Invalid points (non-finite, or zero / negative depth where depth exists) are always dropped.
    """
    pts_hw3 = result_points_hw3(result)
    if pts_hw3 is None:
        return np.zeros((0, 3), np.float32), None
    h, w = pts_hw3.shape[:2]
    s = int(selection.stride)
    pts = pts_hw3[::s, ::s]
    valid = np.isfinite(pts).all(axis=-1)
    if result.depth is not None and np.shape(result.depth) == (h, w):
        valid &= np.asarray(result.depth)[::s, ::s] > 0
    conf = None
    if result.confidence is not None and np.shape(result.confidence) == (h, w):
        conf = np.asarray(result.confidence)[::s, ::s]
        valid &= np.isfinite(conf)
        if selection.min_confidence is not None:
            valid &= conf >= selection.min_confidence
        if selection.conf_quantile > 0 and valid.any():
            valid &= conf >= np.quantile(conf[valid], selection.conf_quantile)
    idx = np.flatnonzero(valid)
    if selection.max_points is not None and idx.size > selection.max_points:
        idx = idx[np.linspace(0, idx.size - 1, int(selection.max_points)).astype(np.intp)]
    xyz = pts.reshape(-1, 3)[idx].astype(np.float32)
    rgb = None
    if result.image is not None:
        img = np.asarray(result.image)
        if img.shape[:2] != (h, w):
            img = _resample_nearest(img, h, w)
        rgb = np.ascontiguousarray(img[::s, ::s].reshape(-1, 3)[idx], dtype=np.uint8)
    return xyz, rgb


def auto_voxel_size(result: FrameResult, fraction: float = 0.01) -> float | None:
    """A voxel size for a scene of unknown scale: `fraction` of the median camera-to-point distance."""
    xyz, _ = select_points(result, PointSelection(max_points=20_000))
    if len(xyz) == 0:
        return None
    dist = np.linalg.norm(xyz - result.T_world_cam[:3, 3].astype(np.float32), axis=1)
    median = float(np.median(dist))
    return fraction * median if median > 0 else None


def _unique_rows(keys_n3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(axis=0) with inverse, ~10x faster by packing three 21-bit offsets into one int64 when they fit."""
    if len(keys_n3) == 0:
        return keys_n3, np.zeros(0, np.intp)
    lo = keys_n3.min(axis=0)
    offsets = keys_n3 - lo
    if int(offsets.max()) >= 1 << 21:
        unique, inverse = np.unique(keys_n3, axis=0, return_inverse=True)
        return unique, inverse.reshape(-1)
    packed = (offsets[:, 0] << 42) | (offsets[:, 1] << 21) | offsets[:, 2]
    unique_packed, inverse = np.unique(packed, return_inverse=True)
    mask = (1 << 21) - 1
    unique = np.stack([unique_packed >> 42, (unique_packed >> 21) & mask, unique_packed & mask], axis=1) + lo
    return unique, inverse.reshape(-1)


class VoxelAccumulator:
    """Union of many point sets, kept at one point per voxel: the mean position and colour of all its points.

    The grid is fixed (voxel `floor(p / voxel_size)`), and each voxel keeps running sums and a count, so merging
    is exact and order-independent: a point's voxel never depends on which other points arrived first (open3d's
    voxel_down_sample anchors its grid at the cloud's minimum, which moves as the cloud grows). New points are
    buffered and merged when the buffer exceeds `buffer_points`, so memory is bounded by the occupied voxels
    plus the buffer.
    """

    def __init__(self, voxel_size: float, buffer_points: int = 300_000) -> None:
        if not voxel_size > 0:
            raise ConfigError(f"voxel size must be positive, got {voxel_size!r}")
        self.voxel_size = float(voxel_size)
        self.buffer_points = int(buffer_points)
        self._xyz: list[np.ndarray] = []
        self._rgb: list[np.ndarray] = []
        self._pending = 0
        self._keys = np.zeros((0, 3), np.int64)
        self._sum_xyz = np.zeros((0, 3), np.float64)
        self._sum_rgb = np.zeros((0, 3), np.float64)
        self._count = np.zeros(0, np.int64)
        self.points_added = 0

    def add(self, xyz: np.ndarray, rgb: np.ndarray | None) -> None:
        """Add points (float [N,3]) with colours (uint8 [N,3]; None: grey)."""
        if len(xyz) == 0:
            return
        self._xyz.append(np.asarray(xyz, np.float64).reshape(-1, 3))
        colours = np.full((len(xyz), 3), 0.5) if rgb is None else np.asarray(rgb, np.float64).reshape(-1, 3) / 255.0
        self._rgb.append(colours)
        self._pending += len(xyz)
        self.points_added += len(xyz)
        if self._pending >= self.buffer_points:
            self.compact()

    def compact(self) -> None:
        """Merge the buffer into the voxel grid."""
        if not self._pending:
            return
        xyz = np.concatenate(self._xyz)
        rgb = np.concatenate(self._rgb)
        self._xyz, self._rgb, self._pending = [], [], 0
        keys = np.concatenate([self._keys, np.floor(xyz / self.voxel_size).astype(np.int64)])
        sum_xyz = np.concatenate([self._sum_xyz, xyz])
        sum_rgb = np.concatenate([self._sum_rgb, rgb])
        count = np.concatenate([self._count, np.ones(len(xyz), np.int64)])
        self._keys, inverse = _unique_rows(keys)
        n = len(self._keys)
        self._sum_xyz = np.stack([np.bincount(inverse, sum_xyz[:, i], n) for i in range(3)], axis=1)
        self._sum_rgb = np.stack([np.bincount(inverse, sum_rgb[:, i], n) for i in range(3)], axis=1)
        self._count = np.bincount(inverse, count, n).astype(np.int64)

    def __len__(self) -> int:
        """Voxels held plus buffered points (what memory is proportional to)."""
        return len(self._keys) + self._pending

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """All accumulated points: (xyz float64 [N,3], rgb float [N,3] in [0, 1]), compacting first."""
        self.compact()
        count = np.maximum(self._count, 1)[:, None]
        return self._sum_xyz / count, self._sum_rgb / count


_EMPTY_PLY = ("ply\nformat ascii 1.0\nelement vertex 0\nproperty double x\nproperty double y\nproperty double z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")


class RevisableCloud:
    """A voxel map whose recent frames can still move: what the PLY writer and the Rerun map both keep.

    Each frame's points are held on their own (downsampled on the map's voxel grid) under a key, so a revised
    pose moves them (`T_new T_old^-1`) and revised points replace them. Once more than `revisable_points` are
    held, the oldest frames are folded into the shared `VoxelAccumulator`, where memory is bounded by the scene
    and nothing moves any more; `move` then returns False for them.
    """

    def __init__(self, voxel_size: float, *, revisable_points: int = 3_000_000, buffer_points: int = 300_000) -> None:
        self.grid = VoxelAccumulator(voxel_size, buffer_points)
        self.voxel_size = self.grid.voxel_size
        self.revisable_points = int(revisable_points)
        self._held: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        self._held_points = 0
        self._folded: set[Any] = set()

    def holds(self, key: Any) -> bool:
        return key in self._held

    def folded(self, key: Any) -> bool:
        return key in self._folded

    def put(self, key: Any, T_world_cam: np.ndarray, xyz: np.ndarray, rgb: np.ndarray | None) -> None:
        """Add (or replace) one frame's world points, placed with pose `T_world_cam`."""
        if len(xyz):
            frame = VoxelAccumulator(self.voxel_size, buffer_points=len(xyz) + 1)
            frame.add(xyz, rgb)
            v_xyz, v_rgb = frame.points()
            xyz = v_xyz.astype(np.float32)
            rgb = None if rgb is None else np.clip(np.round(v_rgb * 255.0), 0, 255).astype(np.uint8)
        old = self._held.pop(key, None)
        self._held_points += len(xyz) - (0 if old is None else len(old[1]))
        self._held[key] = (np.array(T_world_cam, np.float64), np.asarray(xyz, np.float32), rgb)
        while self._held_points > self.revisable_points and len(self._held) > 1:
            oldest = next(iter(self._held))
            _, f_xyz, f_rgb = self._held.pop(oldest)
            self.grid.add(f_xyz, f_rgb)
            self._held_points -= len(f_xyz)
            self._folded.add(oldest)

    def move(self, key: Any, T_world_cam: np.ndarray) -> bool:
        """Re-place a held frame's points with its revised pose; False when the frame is not held."""
        held = self._held.get(key)
        if held is None:
            return False
        T_old, xyz, rgb = held
        M = np.asarray(T_world_cam, np.float64) @ inv_se3(T_old)
        self._held[key] = (np.array(T_world_cam, np.float64), (xyz @ M[:3, :3].T + M[:3, 3]).astype(np.float32), rgb)
        return True

    def __len__(self) -> int:
        return len(self.grid) + self._held_points

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """The map: (xyz float64 [N,3], rgb float [N,3] in [0, 1]), held frames merged on the same grid."""
        if not self._held:
            return self.grid.points()
        snapshot = VoxelAccumulator(self.voxel_size, buffer_points=1 << 62)
        xyz, rgb = self.grid.points()
        snapshot.add(xyz, np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8))
        for _, f_xyz, f_rgb in self._held.values():
            snapshot.add(f_xyz, f_rgb)
        return snapshot.points()


class PointCloudWriter:
    """Sink writing the voxel-downsampled coloured union of all point maps to a PLY file at `close`.

    Revised results (`is_update`, same `seq`) are applied (`RevisableCloud`): a revision that carries points
    replaces the frame's points; a pose-only revision (recon.map's loop-closure corrections) moves them with the
    new pose. A revision of a frame already folded into the voxel grid (more than `revisable_points` held) is
    counted and logged once. Without `voxel_size` it is chosen from the first result with points
    (`auto_voxel_size`), because monocular backends have an arbitrary scale.
    """

    name = "ply"

    def __init__(self, path: str | Path, *, voxel_size: float | None = None,
                 selection: PointSelection = DEFAULT_SELECTION,
                 buffer_points: int = 300_000, revisable_points: int = 3_000_000) -> None:
        self.path = Path(path)
        self.selection = selection
        self.voxel_size = voxel_size
        self.buffer_points = buffer_points
        self.revisable_points = int(revisable_points)
        self._acc: RevisableCloud | None = None
        self._closed = False
        self.points_written = 0
        self.revisions_applied = 0
        self.revisions_too_late = 0

    def on_result(self, result: FrameResult) -> None:
        key = (result.stream_id, int(result.seq))
        has_points = result_points_hw3(result) is not None
        if result.is_update and self._acc is not None and self._acc.folded(key):
            self.revisions_too_late += 1
            if self.revisions_too_late == 1:
                logger.warning("point cloud: a revision of %s/%d came after its points were merged into the voxel "
                               "grid (raise revisable_points); it and later ones keep their first pose", *key)
            return
        if result.is_update and not has_points:
            if self._acc is not None and self._acc.move(key, result.T_world_cam):
                self.revisions_applied += 1
            return
        if self._acc is None:
            voxel = self.voxel_size or auto_voxel_size(result)
            if voxel is None:
                return
            self._acc = RevisableCloud(voxel, revisable_points=self.revisable_points,
                                       buffer_points=self.buffer_points)
            how = "" if self.voxel_size else " (auto: 1% of the median depth)"
            logger.info("point cloud voxel size %.4g%s", voxel, how)
        if result.is_update:
            self.revisions_applied += 1
        xyz, rgb = select_points(result, self.selection)
        self._acc.put(key, result.T_world_cam, xyz, rgb)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        import open3d as o3d

        pcd = o3d.geometry.PointCloud()
        if self._acc is not None:
            xyz, rgb = self._acc.points()
            pcd.points = o3d.utility.Vector3dVector(xyz)
            pcd.colors = o3d.utility.Vector3dVector(rgb)
        self.points_written = len(pcd.points)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.ply")
        if self.points_written == 0:
            # open3d refuses to write an empty cloud; an empty but valid PLY keeps the run's outputs uniform.
            logger.warning("no valid points to write: %s is empty", self.path)
            tmp.write_text(_EMPTY_PLY)
        elif not o3d.io.write_point_cloud(str(tmp), pcd, write_ascii=False):
            raise OSError(f"open3d could not write {tmp}")
        os.replace(tmp, self.path)
        logger.info("wrote %d points to %s", self.points_written, self.path)

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "points": self.points_written,
                "voxel_size": None if self._acc is None else self._acc.voxel_size,
                "revisions_applied": self.revisions_applied, "revisions_too_late": self.revisions_too_late}
