"""Intrinsics from the EXIF tags of phone and camera JPEGs (Pillow), when no calibration file exists.

Two routes, in order of trust:
1. `FocalLength` (mm) with the sensor's pixel pitch (`FocalPlaneXResolution` / `FocalPlaneResolutionUnit`, at the
   `ExifImageWidth` the camera wrote), which is exact for the recorded image;
2. `FocalLengthIn35mmFilm`: the focal length on a 36 x 24 mm frame with the same field of view *along the
   diagonal* (the CIPA DC-008 definition), so f_px = f35 * diagonal_px / 43.27.

The principal point is put at the image centre and fx = fy (EXIF says nothing more); distortion is unknown.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_EXIF_IFD = 0x8769
_FOCAL_LENGTH = 0x920A
_FOCAL_35MM = 0xA405
_FOCAL_PLANE_X_RES = 0xA20E
_FOCAL_PLANE_UNIT = 0xA210
_EXIF_WIDTH = 0xA002
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # inch, cm, mm, micrometre
_DIAGONAL_35MM = math.hypot(36.0, 24.0)


def _number(value: object) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def exif_focal_px(path: str | Path, size: tuple[int, int]) -> tuple[float, str] | None:
    """(focal length in pixels at `size` = (width, height), how it was derived), or None without usable tags."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            exif = im.getexif()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None
    tags = dict(exif)
    with contextlib.suppress(KeyError, ValueError, TypeError):
        tags.update(exif.get_ifd(_EXIF_IFD))
    w, h = size
    f_mm = _number(tags.get(_FOCAL_LENGTH))
    res = _number(tags.get(_FOCAL_PLANE_X_RES))
    unit = _UNIT_MM.get(int(tags.get(_FOCAL_PLANE_UNIT, 2) or 2))
    exif_w = _number(tags.get(_EXIF_WIDTH)) or float(max(w, h))
    if f_mm and res and unit:
        # ExifImageWidth is along the long side for most cameras; the pitch is per pixel of that width.
        f_px = f_mm * res / unit * (max(w, h) / exif_w)
        return f_px, f"EXIF FocalLength {f_mm:g} mm x FocalPlaneXResolution"
    f35 = _number(tags.get(_FOCAL_35MM))
    if f35:
        return f35 * math.hypot(w, h) / _DIAGONAL_35MM, f"EXIF FocalLengthIn35mmFilm {f35:g} mm"
    return None


def exif_intrinsics(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, str] | None:
    """(K with the principal point at the centre, source description) from EXIF, or None."""
    found = exif_focal_px(path, size)
    if found is None:
        return None
    f, how = found
    w, h = size
    K = np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])
    return K, how
