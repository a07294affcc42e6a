"""`open_sequence`: one entry point that recognises the layout of a path and returns the matching lazy reader."""

from __future__ import annotations

import logging
from pathlib import Path

from recon.datasets.base import OnError, Sequence
from recon.datasets.files import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from recon.errors import SequenceError

logger = logging.getLogger(__name__)

LAYOUTS = ("video", "bag", "tum", "7scenes", "kitti", "scannet", "nerfstudio", "folder")


def detect_layout(path: str | Path) -> str:
    """The layout name of `path` (one of LAYOUTS); raises SequenceError saying what was expected."""
    from recon.datasets.bag import BAG_SUFFIXES, is_bag
    from recon.datasets.folder import SCENE_IMAGE_FOLDERS, scene_image_folder
    from recon.datasets.kitti import is_kitti_sequence
    from recon.datasets.nerfstudio import is_nerfstudio_folder
    from recon.datasets.scannet import is_scannet_scene
    from recon.datasets.seven_scenes import is_seven_scenes_sequence, seven_scenes_sequences
    from recon.datasets.tum import is_tum_folder

    p = Path(path)
    if not p.exists():
        raise SequenceError(f"{p}: no such file or folder")
    if is_bag(p):
        return "bag"
    if p.is_file():
        if p.suffix.lower() in VIDEO_EXTENSIONS:
            return "video"
        raise SequenceError(f"{p}: not a video file (known extensions: {', '.join(VIDEO_EXTENSIONS)}) nor a bag "
                            f"({', '.join(BAG_SUFFIXES)}); pass the folder for image sequences")
    if is_tum_folder(p):
        return "tum"
    if is_seven_scenes_sequence(p) or seven_scenes_sequences(p):
        return "7scenes"
    if is_kitti_sequence(p):
        return "kitti"
    if is_scannet_scene(p):
        return "scannet"
    if is_nerfstudio_folder(p):
        return "nerfstudio"
    if any(c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS for c in p.iterdir()) or scene_image_folder(p):
        return "folder"
    raise SequenceError(
        f"{p}: unknown sequence layout; expected a video file, a ROS bag (.bag, .mcap, rosbag2 folder with "
        "metadata.yaml), a TUM RGB-D folder (rgb.txt), a 7-Scenes sequence (frame-XXXXXX.color.png), a KITTI "
        "odometry sequence (image_2/, calib.txt), an exported ScanNet scene (color/, depth/, intrinsic/), a nerfstudio "
        "folder (transforms.json with frames), a folder of images or a scene folder with one of "
        f"{', '.join(f'{n}/' for n in SCENE_IMAGE_FOLDERS)} (COLMAP, nerfstudio)")


def open_sequence(path: str | Path, *, on_error: OnError | str = OnError.STOP, fps: float | None = None,
                  max_frames: int | None = None, stride: int = 1, topic: str | None = None,
                  depth_topic: str | None = None, camera_info_topic: str | None = None) -> Sequence:
    """Open any supported sequence lazily.

    Args:
        path: video file or sequence folder (layout detected by `detect_layout`).
        on_error: `stop` raises CorruptFrameError at a missing or undecodable frame; `skip` logs, counts it in
            `sequence.stats` and goes on.
        fps: frame rate for sources without timestamps (image folders, 7-Scenes, KITTI without times.txt).
        max_frames: read at most this many frames (after `stride`).
        stride: read every `stride`-th frame.
        topic, depth_topic, camera_info_topic: bags only: the colour, depth and CameraInfo topics (default: chosen
            by message type, see `recon.datasets.bag`; "" for no depth / no camera info).
    """
    on_error = OnError(on_error)
    layout = detect_layout(path)
    logger.debug("%s: %s layout", path, layout)
    common = {"on_error": on_error, "stride": stride, "max_frames": max_frames}
    topics = {"topic": topic, "depth_topic": depth_topic, "camera_info_topic": camera_info_topic}
    if layout == "bag":
        from recon.datasets.bag import BagSequence

        return BagSequence(path, **topics, **common)
    given = [f"{k}={v!r}" for k, v in topics.items() if v is not None]
    if given:
        raise SequenceError(f"{path}: {', '.join(given)} apply to ROS bags only, this is a {layout} sequence")
    if layout == "video":
        from recon.datasets.video import VideoSequence

        return VideoSequence(path, **common)
    if layout == "tum":
        from recon.datasets.tum import TumSequence

        return TumSequence(path, **common)
    if layout == "7scenes":
        from recon.datasets.seven_scenes import SevenScenesSequence

        return SevenScenesSequence(path, fps=fps, **common)
    if layout == "kitti":
        from recon.datasets.kitti import KittiSequence

        return KittiSequence(path, fps=fps, **common)
    if layout == "nerfstudio":
        from recon.datasets.nerfstudio import NerfstudioSequence

        return NerfstudioSequence(path, fps=fps, **common)
    if layout == "scannet":
        from recon.datasets.scannet import ScanNetSequence

        return ScanNetSequence(path, fps=fps, **common)
    from recon.datasets.folder import ImageFolderSequence

    return ImageFolderSequence(path, fps=fps, **common)
