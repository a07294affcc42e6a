"""nerfstudio / instant-ngp data folders: `transforms.json` listing each frame's image, pose and (optionally) depth.

What `ns-process-data` writes (from COLMAP, Record3D, Polycam...), what instant-ngp reads, and what
`recon replay --export nerfstudio` writes, so a run hands its frames over and back.

- Frames: `frames[i].file_path`, relative to the folder; read in the natural order of their file names (the JSON's
  order is not always the capture order).
- Intrinsics: the frame's own `fl_x`... merged over the top level's (`recon.calib.camera_info.transforms_calibration`).
- Depth: `depth_file_path`, a 16-bit PNG or a `.npy`, times `depth_unit_scale_factor` metres per unit (nerfstudio's
  default 1e-3: millimetres). Every frame must have one when any has; a frame without it is a corrupt frame.
- Poses: `transform_matrix`, camera-to-world with OpenGL camera axes, become the ground truth in OpenCV axes. They
  are whatever made the data (COLMAP's estimate, a phone's tracking, a previous recon run), so `metrics.json` is
  agreement with that, not with a surveyed truth.
- Timestamps: `recon_t_ns` (recon's own exports), else the file names' / the frame rate's
  (`recon.datasets.folder.folder_timestamps`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from recon.calib.camera_info import transforms_calibration
from recon.datasets.base import IndexedSequence, OnError, ground_truth_with_gaps
from recon.datasets.files import natural_key, read_depth_png
from recon.datasets.folder import folder_timestamps
from recon.errors import SequenceError
from recon.geometry.transforms import OPENCV_TO_OPENGL
from recon.io.images import corrupt_frame, read_rgb
from recon.types import Frame

logger = logging.getLogger(__name__)

TRANSFORMS = "transforms.json"


def is_nerfstudio_folder(path: Path) -> bool:
    """A folder whose transforms.json lists frames by file_path."""
    f = path / TRANSFORMS
    if not f.is_file():
        return False
    try:
        frames = json.loads(f.read_text()).get("frames")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(frames) and isinstance(frames[0], dict) and "file_path" in frames[0]


class NerfstudioSequence(IndexedSequence):
    """The frames of one transforms.json read lazily (RGB, optional metric depth, the poses as ground truth)."""

    def __init__(self, path: str | Path, *, on_error: OnError = OnError.STOP, stride: int = 1,
                 max_frames: int | None = None, fps: float | None = None) -> None:
        root = Path(path)
        where = root / TRANSFORMS
        try:
            data = json.loads(where.read_text())
            records: list[dict[str, Any]] = [{**{k: v for k, v in data.items() if k != "frames"}, **f}
                                             for f in data["frames"]]
            records.sort(key=lambda r: natural_key(str(r["file_path"])))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SequenceError(f"{where}: expected a transforms.json with frames[].file_path: "
                                f"{type(e).__name__}: {e}") from e
        if not records:
            raise SequenceError(f"{where}: no frames")
        self.root = root
        self._records = records
        # Each frame's camera, checked here (a camera a CameraInfo cannot carry fails at open, not mid-run).
        self._infos = [transforms_calibration(r, where).camera_info(None) for r in records]
        self._depth_units = 1.0 / float(data.get("depth_unit_scale_factor", 1e-3))
        with_depth = sum("depth_file_path" in r for r in records)
        paths = [root / str(r["file_path"]) for r in records]
        stamps = [r.get("recon_t_ns") for r in records]
        self._t_ns = ([int(t) for t in stamps] if all(isinstance(t, int) for t in stamps)
                      else folder_timestamps(paths, fps))
        self._gt = [self._pose(r, where) for r in records]
        super().__init__(root.resolve().name, on_error=on_error, stride=stride, max_frames=max_frames,
                         camera_info=self._infos[0], ground_truth=ground_truth_with_gaps(self._t_ns, self._gt),
                         has_depth=with_depth > 0)
        self.intrinsics_source = f"calibration file {TRANSFORMS}"
        if 0 < with_depth < len(records):
            logger.warning("%s: %d of %d frames have no depth_file_path; they are corrupt frames of this RGB-D "
                           "sequence (--on-error decides)", where, len(records) - with_depth, len(records))

    @staticmethod
    def _pose(record: dict[str, Any], where: Path) -> np.ndarray | None:
        if "transform_matrix" not in record:
            return None
        try:
            c2w = np.asarray(record["transform_matrix"], np.float64)
        except (TypeError, ValueError) as e:
            raise SequenceError(f"{where}: {record['file_path']}: transform_matrix is not a matrix: {e}") from e
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0, 0, 0, 1]])
        if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
            raise SequenceError(f"{where}: {record['file_path']}: transform_matrix must be a finite 4x4 (or 3x4)")
        return c2w @ OPENCV_TO_OPENGL

    def _count(self) -> int:
        return len(self._records)

    def _load(self, index: int, seq: int) -> Frame:
        record = self._records[index]
        path = self.root / str(record["file_path"])
        image = read_rgb(path)
        info = self._infos[index]
        if info is not None and image.shape[:2] != (info.height, info.width):
            raise corrupt_frame(path, f"image {image.shape[1]}x{image.shape[0]} is not the {info.width}x"
                                      f"{info.height} its transforms.json entry states")
        meta: dict[str, Any] = {"path": str(path), "index": index}
        depth = None
        if self.has_depth:
            if "depth_file_path" not in record:
                raise corrupt_frame(path, "no depth_file_path for this frame in an RGB-D transforms.json")
            depth_path = self.root / str(record["depth_file_path"])
            depth = self._read_depth(depth_path)
            if depth.shape != image.shape[:2]:
                raise corrupt_frame(depth_path, f"depth {depth.shape} does not match image {image.shape[:2]}")
            meta["depth_path"] = str(depth_path)
        if self._gt[index] is not None:
            meta["T_world_cam_gt"] = self._gt[index].copy()
        K = None if info is None else info.K
        return Frame(self.name, seq, int(self._t_ns[index]), image, K, depth, meta)

    def _read_depth(self, path: Path) -> np.ndarray:
        if path.suffix.lower() != ".npy":
            return read_depth_png(path, self._depth_units)
        try:
            raw = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise corrupt_frame(path, f"unreadable depth array: {e}") from e
        if raw.ndim == 3 and raw.shape[-1] == 1:
            raw = raw[..., 0]
        if raw.ndim != 2 or raw.dtype.kind not in "uif":
            raise corrupt_frame(path, f"expected an HxW depth array, got {raw.dtype} {raw.shape}")
        depth = (raw.astype(np.float64) / self._depth_units).astype(np.float32)
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0  # invalid pixels, as the PNG readers' 0
        return depth
