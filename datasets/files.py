"""File helpers shared by the readers: decoding depth, natural sort, timestamps, calibration files.

Colour images are decoded by `recon.io.images` (the export's record reads them too); depth is decoded here with
the same rules: Pillow, because it *fails* on truncated files, and every failure a `CorruptFrameError` naming the
file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from recon.errors import SequenceError
from recon.io.images import corrupt_frame, open_image
from recon.io.trajectory import seconds_to_ns

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")


def read_depth_png(path: str | Path, scale: float, invalid: int | None = None) -> np.ndarray:
    """float32 HxW metres from a 16-bit depth PNG storing `scale` units per metre; 0 (and `invalid`) mean none."""
    path = Path(path)
    im = open_image(path)
    raw = np.asarray(im)
    if raw.ndim != 2 or raw.dtype.kind not in "ui":
        raise corrupt_frame(path, f"expected a single-channel 16-bit depth image, got mode {im.mode}")
    raw = raw.astype(np.int64)
    depth = (raw / float(scale)).astype(np.float32)
    if invalid is not None:
        depth[raw == invalid] = 0.0
    return depth


def read_matrix4(path: str | Path) -> np.ndarray | None:
    """A text file holding one 4x4 matrix (7-Scenes / ScanNet poses, ScanNet intrinsics); None when missing,
    malformed or not finite (ScanNet writes -inf for a frame whose pose failed)."""
    try:
        M = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError):
        return None
    if M.shape != (4, 4) or not np.all(np.isfinite(M)):
        return None
    return M


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
