"""Colour image files to arrays, for the dataset readers and for the export's own frame record.

Images are decoded with Pillow because it *fails* on truncated files (OpenCV may return a partly grey image with
only a warning on stderr); every failure becomes a `CorruptFrameError` whose message and `.path` name the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from recon.errors import CorruptFrameError


def corrupt_frame(path: str | Path, reason: str) -> CorruptFrameError:
    """A CorruptFrameError naming `path` (also kept as `.path` so readers can list skipped files)."""
    err = CorruptFrameError(f"{path}: {reason}")
    err.path = str(path)  # type: ignore[attr-defined]
    return err


def open_image(path: Path) -> Image.Image:
    """The decoded image at `path` (decoded now: a truncated file raises here, as a CorruptFrameError)."""
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
    im = open_image(Path(path))
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(a / max(float(a.max()), 1.0) * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
