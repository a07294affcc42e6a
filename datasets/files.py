"""File helpers shared by the readers: decoding images and depth, natural sort, timestamps, calibration files.

Images are decoded with Pillow because it *fails* on truncated files (OpenCV may return a partly grey image with
only a warning on stderr); every failure becomes a `CorruptFrameError` whose message and `.path` name the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from recon.errors import CorruptFrameError, SequenceError
from recon.io.trajectory import seconds_to_ns

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
