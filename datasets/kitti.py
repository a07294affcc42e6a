"""KITTI odometry sequences: `sequences/XX/{image_2,calib.txt,times.txt}` and `poses/XX.txt`.

The left colour camera (`image_2`) is read; a sequence with only grey images (`image_0`) is read from there with
the grey value copied into the three channels. K is the left 3x3 block of the matching projection matrix
(`P2` / `P0`) in `calib.txt`. Timestamps come from `times.txt` (seconds), else 10 Hz.

Ground truth (`poses/XX.txt`, 12 numbers per line, a 3x4 row-major matrix) is the pose of the *grey* camera 0 in
the frame of its first pose. For `image_2` it is moved to camera 2 with the rectified baseline in `P2`
(`T_world_cam2 = T_world_cam0 @ T_cam0_cam2`, a ~6 cm shift along x), so poses and images describe the same
camera.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recon.calib.camera_info import parse_kitti_projections
from recon.datasets.base import IndexedSequence, OnError
from recon.datasets.files import IMAGE_EXTENSIONS, image_size, natural_key
from recon.errors import SequenceError
from recon.io.images import read_rgb
from recon.io.trajectory import seconds_to_ns
from recon.types import CameraInfo, Frame, Trajectory

logger = logging.getLogger(__name__)

KITTI_FPS = 10.0


def is_kitti_sequence(path: Path) -> bool:
    return (path / "image_2").is_dir() or ((path / "image_0").is_dir() and (path / "calib.txt").is_file())


def read_kitti_calib(path: Path) -> dict[str, np.ndarray]:
    """Projection matrices by name (`P0`..`P3`, `Tr`) as 3x4 arrays."""
    try:
        text = path.read_text()
    except OSError as e:
        raise SequenceError(f"cannot read {path}: {e}") from e
    return parse_kitti_projections(text, path)


def _read_poses(path: Path) -> np.ndarray:
    try:
        data = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise SequenceError(f"cannot read KITTI poses {path}: {e}") from e
    if data.shape[1] != 12:
        raise SequenceError(f"{path}: expected 12 numbers per line (3x4 pose), got {data.shape[1]}")
    T = np.tile(np.eye(4), (len(data), 1, 1))
    T[:, :3, :] = data.reshape(-1, 3, 4)
    return T


class KittiSequence(IndexedSequence):
    """One KITTI odometry sequence folder (`.../sequences/XX`) read lazily."""

    def __init__(self, path: str | Path, *, on_error: OnError = OnError.STOP, stride: int = 1,
                 max_frames: int | None = None, fps: float | None = None) -> None:
        root = Path(path)
        if not is_kitti_sequence(root):
            raise SequenceError(f"{root}: not a KITTI odometry sequence (no image_2/ or image_0/ + calib.txt)")
        self.root = root
        cam = "image_2" if (root / "image_2").is_dir() else "image_0"
        self._images = sorted((p for p in (root / cam).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                              key=lambda p: natural_key(p.name))
        if not self._images:
            raise SequenceError(f"{root / cam}: no images")
        n = len(self._images)

        times = root / "times.txt"
        if times.is_file():
            try:
                vals = [ln.split()[0] for ln in times.read_text().splitlines() if ln.strip()]
                self._t_ns = [seconds_to_ns(v) for v in vals]
            except (OSError, ValueError) as e:
                raise SequenceError(f"cannot read {times}: {e}") from e
            if len(self._t_ns) < n:
                raise SequenceError(f"{times}: {len(self._t_ns)} timestamps for {n} images")
        else:
            rate = fps or KITTI_FPS
            self._t_ns = [round(i * 1e9 / rate) for i in range(n)]

        calib = read_kitti_calib(root / "calib.txt") if (root / "calib.txt").is_file() else {}
        P = calib.get("P2" if cam == "image_2" else "P0")
        camera_info = None
        T_cam0_cam = np.eye(4)
        if P is not None:
            K = P[:, :3].copy()
            size = image_size(self._images[0]) or (1241, 376)
            camera_info = CameraInfo(size[0], size[1], K)
            # P = K [I | t] with t mapping camera-0 points into this rectified camera; invert for cam -> cam0.
            t = np.linalg.solve(K, P[:, 3])
            T_cam0_cam[:3, 3] = -t
        else:
            logger.warning("%s: no calib.txt with %s; intrinsics unknown", root, "P2" if cam == "image_2" else "P0")

        ground_truth = None
        self._gt: np.ndarray | None = None
        for poses in (root.parent.parent / "poses" / f"{root.name}.txt", root / "poses.txt"):
            if poses.is_file():
                T = _read_poses(poses) @ T_cam0_cam
                if len(T) < n:
                    raise SequenceError(f"{poses}: {len(T)} poses for {n} images")
                self._gt = T
                ground_truth = Trajectory(np.asarray(self._t_ns[: len(T)], dtype=np.int64), T)
                break
        super().__init__(f"kitti_{root.name}", on_error=on_error, stride=stride, max_frames=max_frames,
                         camera_info=camera_info, ground_truth=ground_truth, has_depth=False)
        camera = "P2" if cam == "image_2" else "P0"
        self.intrinsics_source = None if P is None else f"calibration file calib.txt ({camera})"

    def _count(self) -> int:
        return len(self._images)

    def _load(self, index: int, seq: int) -> Frame:
        path = self._images[index]
        image = read_rgb(path)
        meta: dict = {"path": str(path), "index": index}
        if self._gt is not None:
            meta["T_world_cam_gt"] = self._gt[index].copy()
        K = None if self.camera_info is None else self.camera_info.K
        return Frame(self.name, seq, int(self._t_ns[index]), image, K, None, meta)
