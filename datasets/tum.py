"""TUM RGB-D sequences: `rgb.txt`, `depth.txt`, `groundtruth.txt` (https://cvg.cit.tum.de/data/datasets/rgbd-dataset).

Colour and depth are captured at slightly different instants; frames are the RGB images paired with the depth map
closest in time (at most `max_diff_s` apart, one-to-one). Without `depth.txt` the sequence is RGB only. Depth
PNGs are uint16 with 5000 units per metre (or `depth_scale` of a `camera.json`); 0 is invalid.

Intrinsics, first match wins: a calibration file in the folder (`camera.json`, `intrinsics.txt`, see
`recon.calib.load_camera_file`); the published calibration of the freiburg1/2/3 sensors when the folder
name says which (`rgbd_dataset_freiburg2_desk`, `fr3_office`); else the TUM default 525/525/319.5/239.5 for
640x480, scaled to the image size. Note that the freiburg1/2 images are distorted: their coefficients are put in
`camera_info.distortion`, the images are not undistorted here.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from recon.calib.camera_info import find_camera_file, load_camera_file
from recon.datasets.association import poses_at
from recon.datasets.base import IndexedSequence, OnError
from recon.datasets.files import image_size, read_depth_png, read_list_file
from recon.errors import SequenceError
from recon.io.images import corrupt_frame, read_rgb
from recon.io.trajectory import read_tum_trajectory
from recon.types import CameraInfo, Frame, Trajectory
from recon.utils.timestamps import associate_timestamps

logger = logging.getLogger(__name__)

TUM_DEPTH_SCALE = 5000.0

# Published calibration of the TUM RGB-D sensors (fx, fy, cx, cy), distortion (k1, k2, p1, p2, k3), at 640x480.
TUM_CAMERAS: dict[str, tuple[tuple[float, float, float, float], tuple[float, ...]]] = {
    "freiburg1": ((517.3, 516.5, 318.6, 255.3), (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    "freiburg2": ((520.9, 521.0, 325.1, 249.7), (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    "freiburg3": ((535.4, 539.2, 320.1, 247.6), ()),
}
TUM_DEFAULT = (525.0, 525.0, 319.5, 239.5)

_FREIBURG = re.compile(r"(?:freiburg|fr)([123])(?![0-9])", re.IGNORECASE)


def is_tum_folder(path: Path) -> bool:
    return (path / "rgb.txt").is_file()


def tum_camera(folder_name: str, width: int, height: int) -> CameraInfo:
    """Default intrinsics for a TUM folder name (freiburg1/2/3 by name, else the TUM default), at width x height."""
    m = _FREIBURG.search(folder_name)
    (fx, fy, cx, cy), dist = TUM_CAMERAS[f"freiburg{m.group(1)}"] if m else (TUM_DEFAULT, ())
    info = CameraInfo(640, 480, np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), np.asarray(dist))
    return info if (width, height) == (640, 480) else info.scaled(width, height)


class TumSequence(IndexedSequence):
    """A TUM RGB-D folder read lazily; frames carry depth (if listed) and `meta["T_world_cam_gt"]` (if known)."""

    def __init__(self, path: str | Path, *, on_error: OnError = OnError.STOP, stride: int = 1,
                 max_frames: int | None = None, max_diff_s: float = 0.02) -> None:
        root = Path(path)
        if not is_tum_folder(root):
            raise SequenceError(f"{root}: not a TUM RGB-D folder (no rgb.txt)")
        self.root = root
        max_diff_ns = round(max_diff_s * 1e9)
        rgb = [(t, fields[0]) for t, fields in read_list_file(root / "rgb.txt") if fields]
        if not rgb:
            raise SequenceError(f"{root / 'rgb.txt'}: lists no images")
        depth_list = root / "depth.txt"
        depth: list[tuple[int, str]] = []
        if depth_list.is_file():
            depth = [(t, fields[0]) for t, fields in read_list_file(depth_list) if fields]
        if depth:
            assoc = associate_timestamps(np.array([t for t, _ in rgb]), np.array([t for t, _ in depth]), max_diff_ns)
            pairs = sorted(zip(assoc.idx_pred.tolist(), assoc.idx_gt.tolist(), strict=True))  # in RGB order
            if not pairs:
                raise SequenceError(f"{root}: no RGB image has a depth map within {max_diff_s} s")
            dropped = len(rgb) - len(pairs)
            if dropped:
                logger.info("%s: %d RGB images have no depth map within %.3f s and are left out", root, dropped,
                            max_diff_s)
            self._entries = [(rgb[i][0], rgb[i][1], depth[j][1]) for i, j in pairs]
        else:
            self._entries = [(t, name, None) for t, name in rgb]

        ground_truth = None
        gt_path = root / "groundtruth.txt"
        self._gt_poses: list[np.ndarray | None] = [None] * len(self._entries)
        if gt_path.is_file():
            t_gt, T_gt = read_tum_trajectory(gt_path)
            if len(t_gt):
                ground_truth = Trajectory(t_gt, T_gt)
                # Ground truth runs at a higher rate than the camera: interpolate within 2 x max_diff.
                self._gt_poses = poses_at(np.array([e[0] for e in self._entries]), t_gt, T_gt, 2 * max_diff_ns)

        self.depth_scale = TUM_DEPTH_SCALE
        first = image_size(root / self._entries[0][1])
        cam_file = find_camera_file(root)
        if cam_file is not None:
            calib = load_camera_file(cam_file)
            camera_info = calib.camera_info(first)
            if calib.depth_scale is not None:
                self.depth_scale = calib.depth_scale
        else:
            w, h = first or (640, 480)
            camera_info = tum_camera(root.resolve().name, w, h)
        super().__init__(root.resolve().name, on_error=on_error, stride=stride, max_frames=max_frames,
                         camera_info=camera_info, ground_truth=ground_truth, has_depth=bool(depth))
        self.intrinsics_source = (f"calibration file {cam_file.name}" if cam_file is not None
                                  else "published TUM RGB-D calibration")

    def _count(self) -> int:
        return len(self._entries)

    def _load(self, index: int, seq: int) -> Frame:
        t_ns, rgb_name, depth_name = self._entries[index]
        rgb_path = self.root / rgb_name
        image = read_rgb(rgb_path)
        depth = None
        if depth_name is not None:
            depth = read_depth_png(self.root / depth_name, self.depth_scale)
            if depth.shape != image.shape[:2]:
                why = f"depth {depth.shape} does not match image {image.shape[:2]}"
                raise corrupt_frame(self.root / depth_name, why)
        meta: dict = {"path": str(rgb_path), "index": index}
        if depth_name is not None:
            meta["depth_path"] = str(self.root / depth_name)
        gt = self._gt_poses[index]
        if gt is not None:
            meta["T_world_cam_gt"] = gt
        K = None if self.camera_info is None else self.camera_info.K
        return Frame(self.name, seq, int(t_ns), image, K, depth, meta)
