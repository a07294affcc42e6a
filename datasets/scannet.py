"""ScanNet scenes as ScanNet's own SensReader exports them: `color/<i>.jpg`, `depth/<i>.png`, `pose/<i>.txt`,
`intrinsic/intrinsic_color.txt`, `intrinsic/intrinsic_depth.txt`.

- Depth: 16-bit PNG, millimetres, 0 = no measurement, usually 640x480. Colour: JPEG, usually 1296x968, from a
  different sensor with its own intrinsics.
- Colour and depth are brought to one grid the way the RGB-D SLAM literature reads ScanNet (NICE-SLAM, SplaTAM...):
  the colour image is resized to the depth image's size and the depth camera's intrinsics are used for both. When
  the two already have one size, nothing is resized.
- `pose/<i>.txt`: 4x4 camera-to-world; frames where ScanNet's tracking failed hold `-inf` and are left out of the
  ground truth (a gap, not a pose).
- No timestamps: frames get `index / fps` (the sensor ran at 30 Hz).
- A calibration file of ours in the scene folder (camera.json...) replaces the depth intrinsics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from recon.calib.camera_info import find_camera_file, load_camera_file
from recon.datasets.base import IndexedSequence, OnError, ground_truth_with_gaps
from recon.datasets.files import image_size, read_depth_png, read_matrix4
from recon.errors import SequenceError
from recon.io.images import corrupt_frame, read_rgb
from recon.types import CameraInfo, Frame

logger = logging.getLogger(__name__)

SCANNET_FPS = 30.0


def is_scannet_scene(path: Path) -> bool:
    """A folder with ScanNet's exported `color/`, `depth/` and `intrinsic/`."""
    return all((path / name).is_dir() for name in ("color", "depth", "intrinsic"))


def _frame_indices(folder: Path, suffixes: tuple[str, ...]) -> dict[int, Path]:
    """`<int>.<suffix>` files of `folder` by their number."""
    out = {}
    for p in folder.iterdir():
        if p.suffix.lower() in suffixes and p.stem.isdigit():
            out[int(p.stem)] = p
    return out


class ScanNetSequence(IndexedSequence):
    """One exported ScanNet scene read lazily (RGB at the depth grid, metric depth, ground truth)."""

    def __init__(self, path: str | Path, *, on_error: OnError = OnError.STOP, stride: int = 1,
                 max_frames: int | None = None, fps: float | None = None) -> None:
        root = Path(path)
        if not is_scannet_scene(root):
            raise SequenceError(f"{root}: not an exported ScanNet scene (color/, depth/, intrinsic/)")
        self.root = root
        self.fps = fps or SCANNET_FPS
        colors = _frame_indices(root / "color", (".jpg", ".jpeg", ".png"))
        if not colors:
            raise SequenceError(f"{root}/color: no frames (<index>.jpg)")
        self._frames = sorted(colors.items())
        depth_size = self._depth_size()
        cam_file = find_camera_file(root)
        if cam_file is not None:
            calib = load_camera_file(cam_file)
            camera_info = calib.camera_info(depth_size or image_size(self._frames[0][1]))
            self.intrinsics_source = f"calibration file {cam_file.name}"
        else:
            camera_info = self._scannet_intrinsics(depth_size)
            self.intrinsics_source = "ScanNet intrinsic/intrinsic_depth.txt"
        if camera_info is None:
            raise SequenceError(f"{root}: no image size for the intrinsics (no readable depth or colour frame)")
        self._size = (camera_info.width, camera_info.height)
        self._gt = [read_matrix4(root / "pose" / f"{idx}.txt") for idx, _ in self._frames]
        ground_truth = ground_truth_with_gaps([self._t_ns(idx) for idx, _ in self._frames], self._gt)
        if ground_truth is not None and len(ground_truth) < len(self._frames):
            logger.info("%s: %d of %d frames have no ground-truth pose (ScanNet's -inf or no pose file)",
                        root.name, len(self._frames) - len(ground_truth), len(self._frames))
        super().__init__(root.resolve().name, on_error=on_error, stride=stride, max_frames=max_frames,
                         camera_info=camera_info, ground_truth=ground_truth, has_depth=True)

    def _depth_size(self) -> tuple[int, int] | None:
        first = self.root / "depth" / f"{self._frames[0][0]}.png"
        return image_size(first)

    def _scannet_intrinsics(self, depth_size: tuple[int, int] | None) -> CameraInfo | None:
        path = self.root / "intrinsic" / "intrinsic_depth.txt"
        M = read_matrix4(path)
        if M is None:
            raise SequenceError(f"{path}: expected the 4x4 depth intrinsics ScanNet exports")
        K = M[:3, :3].copy()
        if not (K[0, 0] > 0 and K[1, 1] > 0) or np.any(K[2] != [0, 0, 1]):
            raise SequenceError(f"{path}: not a pinhole camera matrix: {K.tolist()}")
        return None if depth_size is None else CameraInfo(depth_size[0], depth_size[1], K)

    def _t_ns(self, idx: int) -> int:
        return round(idx * 1e9 / self.fps)

    def _count(self) -> int:
        return len(self._frames)

    def _load(self, index: int, seq: int) -> Frame:
        idx, color_path = self._frames[index]
        image = read_rgb(color_path)
        w, h = self._size
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        depth_path = self.root / "depth" / f"{idx}.png"
        if not depth_path.is_file():
            raise corrupt_frame(depth_path, "missing depth frame")
        depth = read_depth_png(depth_path, 1000.0)
        if depth.shape != (h, w):
            raise corrupt_frame(depth_path, f"depth {depth.shape} does not match the first depth frame {(h, w)}")
        meta: dict = {"path": str(color_path), "depth_path": str(depth_path), "index": index}
        if self._gt[index] is not None:
            meta["T_world_cam_gt"] = self._gt[index].copy()
        K = None if self.camera_info is None else self.camera_info.K
        return Frame(self.name, seq, self._t_ns(idx), image, K, depth, meta)
