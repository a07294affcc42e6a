"""Camera calibration from views of a checkerboard or a ChArUco board (OpenCV), with per-view reprojection errors
and outlier views dropped.

    board = parse_board("checkerboard:9x6:0.025")          # inner corners cols x rows, square size in metres
    board = parse_board("charuco:7x5:0.04:0.03:DICT_4X4_50")  # squares x, y, square and marker size, dictionary
    views = [v for name, img in images if (v := detect_board(board, img, name)) is not None]
    result = calibrate(views, (width, height), model="plumb_bob")   # or "fisheye"
    result.camera_info, result.rms, result.per_view, result.dropped

Models: `plumb_bob` (cv2.calibrateCamera: k1, k2, p1, p2, k3, what ROS and every pinhole consumer reads) and
`fisheye` (cv2.fisheye.calibrate: the equidistant k1..k4 of ROS' `equidistant`). Outliers: after each fit, views
whose RMS reprojection error exceeds `max(outlier_factor x median, median + min_outlier_px)` are dropped and the
camera refitted, until none is (or `min_views` remain). A view is one image with a detected board.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from recon.errors import ConfigError, ReconError
from recon.types import CameraInfo

logger = logging.getLogger(__name__)

MODELS = ("plumb_bob", "fisheye")


class CalibrationError(ReconError):
    """Calibration cannot be done from the views given (too few detected boards, a degenerate set)."""


@dataclass(frozen=True)
class Board:
    """A calibration target.

    Attributes:
        kind: "checkerboard" or "charuco".
        cols, rows: checkerboard: inner corners per row and column; ChArUco: squares in x and y.
        square: square side in metres (sets the unit of the board poses only; K does not depend on it).
        marker: ChArUco marker side in metres.
        dictionary: ChArUco ArUco dictionary name (cv2.aruco.DICT_*).
    """

    kind: str
    cols: int
    rows: int
    square: float
    marker: float = 0.0
    dictionary: str = "DICT_4X4_50"

    def __post_init__(self) -> None:
        if self.kind not in ("checkerboard", "charuco"):
            raise ConfigError(f"board kind must be checkerboard or charuco, got {self.kind!r}")
        if self.cols < 2 or self.rows < 2 or not self.square > 0:
            raise ConfigError(f"board needs at least 2x2 corners and a positive square size, got {self}")
        if self.kind == "charuco" and not 0 < self.marker < self.square:
            raise ConfigError(f"a ChArUco marker must be smaller than its square, got {self.marker} >= {self.square}")

    def describe(self) -> str:
        if self.kind == "checkerboard":
            return f"checkerboard {self.cols}x{self.rows} inner corners, {1000 * self.square:g} mm squares"
        return (f"ChArUco {self.cols}x{self.rows} squares of {1000 * self.square:g} mm, markers "
                f"{1000 * self.marker:g} mm ({self.dictionary})")

    def charuco(self) -> object:
        import cv2

        if not hasattr(cv2.aruco, self.dictionary):
            raise ConfigError(f"unknown ArUco dictionary {self.dictionary!r} (e.g. DICT_4X4_50, DICT_5X5_100)")
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.cols, self.rows), self.square, self.marker, dictionary)

    def checkerboard_points(self) -> np.ndarray:
        """Object points [cols*rows, 3] of the inner corners, row by row, in metres (z = 0)."""
        grid = np.mgrid[0:self.cols, 0:self.rows].T.reshape(-1, 2)
        return np.hstack([grid * self.square, np.zeros((len(grid), 1))]).astype(np.float32)


def parse_board(spec: str) -> Board:
    """`checkerboard:COLSxROWS:SQUARE` or `charuco:SXxSY:SQUARE:MARKER[:DICT]` (sizes in metres) -> Board."""
    parts = spec.split(":")
    try:
        kind = parts[0].lower()
        cols, rows = (int(x) for x in parts[1].lower().split("x"))
        if kind == "checkerboard" and len(parts) == 3:
            return Board(kind, cols, rows, float(parts[2]))
        if kind == "charuco" and len(parts) in (4, 5):
            return Board(kind, cols, rows, float(parts[2]), float(parts[3]),
                         parts[4].upper() if len(parts) == 5 else "DICT_4X4_50")
    except (IndexError, ValueError) as e:
        raise ConfigError(f"--board {spec!r}: {e}; expected checkerboard:9x6:0.025 or charuco:7x5:0.04:0.03"
                          "[:DICT_4X4_50]") from e
    raise ConfigError(f"--board {spec!r}: expected checkerboard:COLSxROWS:SQUARE_M (inner corners) or "
                      "charuco:SQUARESXxSQUARESY:SQUARE_M:MARKER_M[:DICT]")


@dataclass
class View:
    """One image's detected board: image points [N,2] (pixels) and their object points [N,3] (metres)."""

    name: str
    image_points: np.ndarray
    object_points: np.ndarray

    def __len__(self) -> int:
        return len(self.image_points)


def _grey(image: np.ndarray) -> np.ndarray:
    import cv2

    return image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def detect_board(board: Board, image: np.ndarray, name: str = "") -> View | None:
    """The board's corners in one image (RGB or grey), sub-pixel refined, or None when it is not (fully) seen."""
    import cv2

    grey = _grey(image)
    if board.kind == "checkerboard":
        size = (board.cols, board.rows)
        # The classic detector refined with cornerSubPix is fast and, on sharp images, as accurate as the sector-based
        # detector (which is slower but finds boards in blur and bad light: the fallback).
        found, corners = cv2.findChessboardCorners(grey, size, flags=cv2.CALIB_CB_ADAPTIVE_THRESH |
                                                   cv2.CALIB_CB_NORMALIZE_IMAGE)
        if found:
            criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)
            corners = cv2.cornerSubPix(grey, corners, (5, 5), (-1, -1), criteria)
        else:
            found, corners = cv2.findChessboardCornersSB(grey, size, flags=cv2.CALIB_CB_EXHAUSTIVE)
            if not found:
                return None
        return View(name, corners.reshape(-1, 2).astype(np.float64), board.checkerboard_points().astype(np.float64))
    charuco = board.charuco()
    corners, ids, _, _ = cv2.aruco.CharucoDetector(charuco).detectBoard(grey)
    if corners is None or ids is None or len(ids) < 6:
        return None  # fewer than 6 corners constrain a homography too weakly
    obj, img = charuco.matchImagePoints(corners, ids)
    return View(name, np.asarray(img, np.float64).reshape(-1, 2), np.asarray(obj, np.float64).reshape(-1, 3))


@dataclass
class CalibrationResult:
    """A fitted camera and how well each view agrees with it.

    Attributes:
        camera_info: K and distortion (k1, k2, p1, p2, k3 for plumb_bob; k1..k4 for fisheye) at `size`.
        model: "plumb_bob" or "fisheye" (`distortion_model` of the files written).
        rms: RMS reprojection error over the kept views, pixels.
        per_view: view name -> RMS reprojection error (pixels) in the final fit, for kept views.
        dropped: view name -> its error when it was dropped as an outlier.
    """

    camera_info: CameraInfo
    model: str
    rms: float
    per_view: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)

    @property
    def distortion_model(self) -> str:
        return "equidistant" if self.model == "fisheye" else "plumb_bob"

    def report(self) -> dict[str, object]:
        info = self.camera_info
        return {"model": self.model, "distortion_model": self.distortion_model, "width": info.width,
                "height": info.height, "K": info.K.tolist(), "distortion": info.distortion.tolist(),
                "rms_px": self.rms, "views_used": len(self.per_view), "per_view_rms_px": self.per_view,
                "dropped_views_rms_px": self.dropped}


def _fisheye_flag(name: str) -> int:
    """OpenCV 4 keeps the fisheye flags in cv2.fisheye (their own values); OpenCV 5 has them with the others."""
    import cv2

    return int(getattr(cv2.fisheye, name, None) or getattr(cv2, name))


def _fit(views: list[View], size: tuple[int, int], model: str, fit_k3: bool
         ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    import cv2

    # cv2.fisheye wants float64 1xNx3 / 1xNx2 per view (OpenCV 5 rejects Nx1x3); the pinhole calibration takes both.
    obj = [v.object_points.astype(np.float64).reshape(1, -1, 3) for v in views]
    img = [v.image_points.astype(np.float64).reshape(1, -1, 2) for v in views]
    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-9)
    if model == "fisheye":
        flags = _fisheye_flag("CALIB_RECOMPUTE_EXTRINSIC") | _fisheye_flag("CALIB_FIX_SKEW")
        _, K, D, rvecs, tvecs = cv2.fisheye.calibrate(obj, img, size, np.eye(3), np.zeros((4, 1)), flags=flags,
                                                      criteria=criteria)
    else:
        flags = 0 if fit_k3 else cv2.CALIB_FIX_K3
        obj = [o.astype(np.float32) for o in obj]
        img = [i.astype(np.float32) for i in img]
        _, K, D, rvecs, tvecs = cv2.calibrateCamera(obj, img, size, None, None, flags=flags, criteria=criteria)
    errors = []
    for o, i, r, t in zip(obj, img, rvecs, tvecs, strict=True):
        if model == "fisheye":
            proj, _ = cv2.fisheye.projectPoints(o, r, t, K, D)
        else:
            proj, _ = cv2.projectPoints(o, r, t, K, D)
        errors.append(float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - i.reshape(-1, 2)) ** 2, axis=1)))))
    return np.asarray(K, np.float64), np.asarray(D, np.float64).reshape(-1), errors


def calibrate(views: Iterable[View], size: tuple[int, int], *, model: str = "plumb_bob", min_views: int = 5,
              outlier_factor: float = 3.0, min_outlier_px: float = 0.5, fit_k3: bool = False,
              frame_id: str = "camera") -> CalibrationResult:
    """Fit the camera to `views` of images of `size` (width, height), dropping outlier views (see the module doc).

    `fit_k3`: plumb_bob also fits k3 (fixed at 0 by default, like ROS camera_calibration: k2 and k3 trade off
    against each other unless the views reach far into the corners, and a wild k3 extrapolates badly).
    """
    if model not in MODELS:
        raise ConfigError(f"calibration model must be one of {', '.join(MODELS)}, got {model!r}")
    kept = [v for v in views if len(v) >= 6]
    if len(kept) < min_views:
        raise CalibrationError(f"{len(kept)} views with a detected board; calibration needs at least {min_views} "
                               "(show the board in more images, at several angles and across the whole image)")
    dropped: dict[str, float] = {}
    while True:
        try:
            K, D, errors = _fit(kept, size, model, fit_k3)
        except Exception as e:  # cv2.error: an ill-conditioned set (all views parallel, too few points)
            raise CalibrationError(f"OpenCV could not calibrate from {len(kept)} views: {e}") from e
        median = float(np.median(errors))
        limit = max(outlier_factor * median, median + min_outlier_px)
        bad = [i for i, e in enumerate(errors) if e > limit]
        if not bad or len(kept) - len(bad) < min_views:
            break
        for i in sorted(bad, reverse=True):
            dropped[kept[i].name] = errors[i]
            logger.info("dropping view %s: reprojection error %.3f px > %.3f px", kept[i].name, errors[i], limit)
            del kept[i]
    total = sum(len(v) for v in kept)
    rms = float(np.sqrt(sum(e * e * len(v) for e, v in zip(errors, kept, strict=True)) / total))
    info = CameraInfo(int(size[0]), int(size[1]), K, D, frame_id)
    return CalibrationResult(info, model, rms, {v.name: e for v, e in zip(kept, errors, strict=True)}, dropped)


def select_views(board: Board, images: Iterable[tuple[str, np.ndarray]], *, max_views: int = 40,
                 min_motion: float = 0.02) -> Iterator[View]:
    """Views of a stream of (name, image): boards detected, and only where the board moved by at least
    `min_motion` of the image diagonal since the last kept view (a video holds many near-identical frames)."""
    last: np.ndarray | None = None
    kept = 0
    for name, image in images:
        if kept >= max_views:
            return
        view = detect_board(board, image, name)
        if view is None:
            continue
        h, w = image.shape[:2]
        centre_and_spread = np.concatenate([view.image_points.mean(0), view.image_points.std(0)])
        if last is not None and np.linalg.norm(centre_and_spread - last) < min_motion * np.hypot(w, h):
            continue
        last = centre_and_spread
        kept += 1
        yield view
