"""Microsoft 7-Scenes sequences: `seq-XX/frame-XXXXXX.color.png`, `.depth.png` (mm, 65535 invalid), `.pose.txt`.

Each `.pose.txt` is a 4x4 camera-to-world matrix. There are no timestamps: frames get `index / fps` (the
Kinect ran at 30 Hz). Intrinsics default to the commonly used 585 / 320 / 240 at 640x480 (or a calibration file
in the folder). The depth images are not registered to the colour camera in the raw release; that is the
dataset's property and is not corrected here.

A scene folder (`chess/`) holding exactly one `seq-XX` opens that sequence; with several, pass the one wanted.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from recon.calib.camera_info import find_camera_file, load_camera_file
from recon.datasets.base import IndexedSequence, OnError, ground_truth_with_gaps
from recon.datasets.files import image_size, natural_key, read_depth_png, read_matrix4
from recon.errors import SequenceError
from recon.io.images import corrupt_frame, read_rgb
from recon.types import CameraInfo, Frame

logger = logging.getLogger(__name__)

SEVEN_SCENES_K = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])
_FRAME = re.compile(r"^frame-(\d+)\.color\.(png|jpg)$")


def is_seven_scenes_sequence(path: Path) -> bool:
    return any(_FRAME.match(p.name) for p in path.glob("frame-*.color.*"))


def seven_scenes_sequences(path: Path) -> list[Path]:
    """`seq-XX` sub-folders of a scene folder that hold frames."""
    return sorted((p for p in path.glob("seq-*") if p.is_dir() and is_seven_scenes_sequence(p)),
                  key=lambda p: natural_key(p.name))


class SevenScenesSequence(IndexedSequence):
    """One 7-Scenes `seq-XX` folder read lazily (RGB, metric depth, ground truth in `meta["T_world_cam_gt"]`)."""

    def __init__(self, path: str | Path, *, on_error: OnError = OnError.STOP, stride: int = 1,
                 max_frames: int | None = None, fps: float | None = None) -> None:
        root = Path(path)
        if not is_seven_scenes_sequence(root):
            seqs = seven_scenes_sequences(root)
            if len(seqs) == 1:
                root = seqs[0]
            elif seqs:
                names = ", ".join(p.name for p in seqs)
                raise SequenceError(f"{root}: a 7-Scenes scene with several sequences ({names}); pass one of them")
            else:
                raise SequenceError(f"{root}: no 7-Scenes frames (frame-XXXXXX.color.png)")
        self.root = root
        self.fps = fps or 30.0
        frames = []
        for p in root.glob("frame-*.color.*"):
            m = _FRAME.match(p.name)
            if m:
                frames.append((int(m.group(1)), p))
        frames.sort()
        self._frames = frames
        # Ground truth: read the small pose files up front (16 numbers each); a missing one leaves a gap.
        self._gt = [read_matrix4(p.with_name(f"frame-{idx:06d}.pose.txt")) for idx, p in frames]
        ground_truth = ground_truth_with_gaps([self._t_ns(idx) for idx, _ in frames], self._gt)
        cam_file = find_camera_file(root) or find_camera_file(root.parent)
        first = image_size(frames[0][1])
        if cam_file is not None:
            camera_info = load_camera_file(cam_file).camera_info(first)
        else:
            camera_info = CameraInfo(640, 480, SEVEN_SCENES_K)
            if first is not None and first != (640, 480):
                camera_info = camera_info.scaled(*first)
        has_depth = frames[0][1].with_name(f"frame-{frames[0][0]:06d}.depth.png").is_file()
        name = f"{root.resolve().parent.name}-{root.name}"
        super().__init__(name, on_error=on_error, stride=stride, max_frames=max_frames, camera_info=camera_info,
                         ground_truth=ground_truth, has_depth=has_depth)
        self.intrinsics_source = (f"calibration file {cam_file.name}" if cam_file is not None
                                  else "7-Scenes default calibration (585, 320, 240 at 640x480)")

    def _t_ns(self, idx: int) -> int:
        return round(idx * 1e9 / self.fps)

    def _count(self) -> int:
        return len(self._frames)

    def _load(self, index: int, seq: int) -> Frame:
        idx, color_path = self._frames[index]
        image = read_rgb(color_path)
        depth = None
        meta: dict = {"path": str(color_path), "index": index}
        if self.has_depth:
            depth_path = color_path.with_name(f"frame-{idx:06d}.depth.png")
            depth = read_depth_png(depth_path, 1000.0, invalid=65535)
            if depth.shape != image.shape[:2]:
                raise corrupt_frame(depth_path, f"depth {depth.shape} does not match image {image.shape[:2]}")
            meta["depth_path"] = str(depth_path)
        if self._gt[index] is not None:
            meta["T_world_cam_gt"] = self._gt[index].copy()
        K = None if self.camera_info is None else self.camera_info.K
        return Frame(self.name, seq, self._t_ns(idx), image, K, depth, meta)
