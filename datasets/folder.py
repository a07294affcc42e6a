"""A folder of images (RGB only), in natural order (`img2` before `img10`).

A scene folder with no images of its own but an image subfolder (`SCENE_IMAGE_FOLDERS`: `<scene>/images/` of
COLMAP, nerfstudio, Mip-NeRF 360, LingBot-Map, and of recon's own colmap / nerfstudio exports) reads that subfolder,
and looks for the calibration file in the image folder first, then in the scene folder (where COLMAP keeps
`sparse/0/cameras.bin` and nerfstudio `transforms.json`).

Timestamps, first rule that applies to *every* file name wins:
1. names that are timestamps: decimal seconds (`1305031102.175304.png`) or >= 16 digits of nanoseconds;
2. with `fps`: names ending in a frame number (`frame_000123.png` -> 123 / fps);
3. otherwise position / fps (30 when no fps is given).
Intrinsics come from a calibration file in the folder (`recon.calib.camera_info.CAMERA_FILE_NAMES`: camera.json,
ROS / OpenCV YAML, COLMAP cameras.txt, 7-Scenes camera-intrinsics.txt...), else from the first image's EXIF focal
length (phone and camera JPEGs), else unknown (the geometric backend then self-calibrates the focal length).
"""

from __future__ import annotations

import logging
from pathlib import Path

from recon.calib.camera_info import find_camera_file, load_camera_file
from recon.calib.exif import exif_intrinsics
from recon.datasets.base import IndexedSequence, OnError
from recon.datasets.files import IMAGE_EXTENSIONS, image_size, index_from_name, natural_key, timestamp_from_name
from recon.errors import ConfigError, SequenceError
from recon.io.images import read_rgb
from recon.types import CameraInfo, Frame

logger = logging.getLogger(__name__)

DEFAULT_FPS = 30.0


SCENE_IMAGE_FOLDERS = ("images", "image", "rgb", "color")
"""Image subfolders of a scene folder, first one holding images wins (`images` before `images_2`, `images_4`...:
the full-resolution frames)."""


def scene_image_folder(folder: Path) -> Path | None:
    """The image subfolder of a scene folder that holds no images itself; None when there is none."""
    if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
        return None
    for name in SCENE_IMAGE_FOLDERS:
        sub = folder / name
        if sub.is_dir() and any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in sub.iterdir()):
            return sub
    return None


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, natural order."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: natural_key(p.name))


def folder_timestamps(paths: list[Path], fps: float | None) -> list[int]:
    """t_ns per file by the rules in the module docstring."""
    if fps is not None and fps <= 0:
        raise ConfigError(f"fps must be positive, got {fps}")
    stamps = [timestamp_from_name(p.stem) for p in paths]
    if paths and all(s is not None for s in stamps):
        return [int(s) for s in stamps if s is not None]
    if fps is not None:
        numbers = [index_from_name(p.stem) for p in paths]
        if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
            return [round(int(n) * 1e9 / fps) for n in numbers if n is not None]
    rate = fps or DEFAULT_FPS
    if fps is None:
        logger.info("no timestamps in the file names and no fps given: assuming %.0f frames/s", rate)
    return [round(i * 1e9 / rate) for i in range(len(paths))]


class ImageFolderSequence(IndexedSequence):
    """Images of one folder read lazily as RGB frames."""

    def __init__(self, path: str | Path, *, on_error: OnError = OnError.STOP, stride: int = 1,
                 max_frames: int | None = None, fps: float | None = None) -> None:
        root = Path(path)
        if not root.is_dir():
            raise SequenceError(f"{root}: not a folder")
        self.root = root
        images = scene_image_folder(root) or root
        self._paths = list_images(images)
        if not self._paths:
            raise SequenceError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it nor in a "
                                f"{'/, '.join(SCENE_IMAGE_FOLDERS)}/ subfolder")
        if images != root and (root / "depth").is_dir():
            # Reading the colour alone would drop the depth without a word.
            raise SequenceError(f"{root}: a scene folder with {images.name}/ and depth/ in no RGB-D layout recon "
                                "knows (TUM rgb.txt + depth.txt, 7-Scenes, ScanNet color/ depth/ intrinsic/, "
                                "nerfstudio transforms.json with frames); pass "
                                f"{images} itself to reconstruct its images without depth")
        if images != root:
            logger.info("%s: a scene folder; reading its %s/ (%d images)", root.name, images.name, len(self._paths))
        self._t_ns = folder_timestamps(self._paths, fps)
        cam_file = find_camera_file(images) or (find_camera_file(root) if images != root else None)
        size = image_size(self._paths[0])
        camera_info, source = None, None
        if cam_file:
            camera_info, source = load_camera_file(cam_file).camera_info(size), f"calibration file {cam_file.name}"
        elif size is not None and (exif := exif_intrinsics(self._paths[0], size)) is not None:
            camera_info, source = CameraInfo(size[0], size[1], exif[0]), exif[1]
        if camera_info is not None:
            logger.info("%s: intrinsics fx %.1f fy %.1f cx %.1f cy %.1f from %s", root.name, camera_info.K[0, 0],
                        camera_info.K[1, 1], camera_info.K[0, 2], camera_info.K[1, 2], source)
        super().__init__(root.resolve().name, on_error=on_error, stride=stride, max_frames=max_frames,
                         camera_info=camera_info, has_depth=False)
        self.intrinsics_source = source

    def _count(self) -> int:
        return len(self._paths)

    def _load(self, index: int, seq: int) -> Frame:
        path = self._paths[index]
        image = read_rgb(path)
        K = None if self.camera_info is None else self.camera_info.K
        return Frame(self.name, seq, int(self._t_ns[index]), image, K, None, {"path": str(path), "index": index})
