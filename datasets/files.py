"""File helpers shared by the readers: decoding images and depth, natural sort, timestamps, calibration files.

Images are decoded with Pillow because it *fails* on truncated files (OpenCV may return a partly grey image with
only a warning on stderr); every failure becomes a `CorruptFrameError` whose message and `.path` name the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from recon.errors import CorruptFrameError, SequenceError
from recon.io.trajectory import seconds_to_ns
from recon.types import CameraInfo

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")


def corrupt_frame(path: str | Path, reason: str) -> CorruptFrameError:
    """A CorruptFrameError naming `path` (also kept as `.path` so readers can list skipped files)."""
    err = CorruptFrameError(f"{path}: {reason}")
    err.path = str(path)  # type: ignore[attr-defined]
    return err


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise corrupt_frame(path, "file is missing")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file raises here, not later
            return im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise corrupt_frame(path, f"cannot decode image ({e})") from e


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 HxWx3 RGB from any Pillow-readable file (grey, palette, 16-bit and RGBA are converted)."""
    im = _open_image(Path(path))
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(a / max(float(a.max()), 1.0) * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def read_depth_png(path: str | Path, scale: float, invalid: int | None = None) -> np.ndarray:
    """float32 HxW metres from a 16-bit depth PNG storing `scale` units per metre; 0 (and `invalid`) mean none."""
    path = Path(path)
    im = _open_image(path)
    raw = np.asarray(im)
    if raw.ndim != 2 or raw.dtype.kind not in "ui":
        raise corrupt_frame(path, f"expected a single-channel 16-bit depth image, got mode {im.mode}")
    raw = raw.astype(np.int64)
    depth = (raw / float(scale)).astype(np.float32)
    if invalid is not None:
        depth[raw == invalid] = 0.0
    return depth


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding, or None when unreadable."""
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, SyntaxError, ValueError):
        return None


_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> list[Any]:
    """Sort key that orders `img2` before `img10` (numbers compare as numbers)."""
    return [int(p) if p.isdigit() else p.lower() for p in _NUM.split(name)]


_SECONDS_STEM = re.compile(r"^(\d+\.\d+)$")
_NANOS_STEM = re.compile(r"^(\d{16,})$")
_INDEX_STEM = re.compile(r"(\d+)$")


def timestamp_from_name(stem: str) -> int | None:
    """t_ns encoded in a file stem: decimal seconds (`1305031102.175304`) or >= 16 digits of nanoseconds."""
    if _SECONDS_STEM.match(stem):
        return seconds_to_ns(stem)
    if _NANOS_STEM.match(stem):
        return int(stem)
    return None


def index_from_name(stem: str) -> int | None:
    """Frame number at the end of a stem (`frame_000123` -> 123), or None."""
    m = _INDEX_STEM.search(stem)
    return int(m.group(1)) if m else None


def read_list_file(path: Path) -> list[tuple[int, list[str]]]:
    """Rows of a TUM-style list file: (t_ns, remaining fields); `#` starts a comment line."""
    try:
        text = path.read_text()
    except OSError as e:
        raise SequenceError(f"cannot read {path}: {e}") from e
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        try:
            rows.append((seconds_to_ns(parts[0]), parts[1:]))
        except ValueError as e:
            raise SequenceError(f"{path}:{lineno}: expected 'timestamp ...', got {line!r}") from e
    return rows


@dataclass
class Calibration:
    """What a calibration file says: K, the image size it refers to (None: not stated), distortion, depth scale."""

    K: np.ndarray
    size: tuple[int, int] | None = None
    distortion: np.ndarray | None = None
    depth_scale: float | None = None

    def camera_info(self, image_size: tuple[int, int] | None) -> CameraInfo | None:
        """CameraInfo at the stated size, else at `image_size` (first image); None when neither is known."""
        size = self.size or image_size
        if size is None:
            return None
        dist = self.distortion if self.distortion is not None else np.zeros(0)
        return CameraInfo(size[0], size[1], self.K, dist)


def load_camera_file(path: Path) -> Calibration:
    """Calibration from a `camera.json`, or a plain text file `fx fy cx cy [width height]` or 9 numbers of K.

    JSON keys: `K` (3x3) or `fx, fy, cx, cy`; optional `width`, `height`, `distortion`, `depth_scale` (depth
    units per metre).
    """
    try:
        text = path.read_text()
    except OSError as e:
        raise SequenceError(f"cannot read calibration {path}: {e}") from e
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
            if "K" in data:
                K = np.asarray(data["K"], dtype=np.float64).reshape(3, 3)
            else:
                K = np.array([[data["fx"], 0, data["cx"]], [0, data["fy"], data["cy"]], [0, 0, 1]], dtype=np.float64)
            size = (int(data["width"]), int(data["height"])) if "width" in data and "height" in data else None
            dist = np.asarray(data.get("distortion", []), dtype=np.float64)
            scale = data.get("depth_scale")
            return Calibration(K, size, dist, None if scale is None else float(scale))
        except (ValueError, KeyError, TypeError) as e:
            raise SequenceError(f"{path}: expected JSON with K (or fx, fy, cx, cy), width and height: {e}") from e
    try:
        nums = [float(x) for x in text.replace(",", " ").split()]
    except ValueError as e:
        raise SequenceError(f"{path}: expected numbers 'fx fy cx cy [width height]' or a 3x3 K: {e}") from e
    if len(nums) == 9:
        return Calibration(np.asarray(nums).reshape(3, 3))
    if len(nums) in (4, 6):
        fx, fy, cx, cy = nums[:4]
        size = (int(nums[4]), int(nums[5])) if len(nums) == 6 else None
        return Calibration(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), size)
    raise SequenceError(f"{path}: expected 'fx fy cx cy [width height]' or 9 numbers of K, got {len(nums)} numbers")


def find_camera_file(folder: Path) -> Path | None:
    """The calibration file of a sequence folder, if any (`camera.json`, `intrinsics.json`, `intrinsics.txt`...)."""
    for name in ("camera.json", "intrinsics.json", "calibration.json", "intrinsics.txt", "camera.txt",
                 "calibration.txt"):
        p = folder / name
        if p.is_file():
            return p
    return None
