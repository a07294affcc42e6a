"""Undistortion of images from cameras with lens distortion, so everything downstream sees a pinhole camera.

The models and the geometric backend assume pinhole images with intrinsics K. A camera whose CameraInfo carries
distortion coefficients (OpenCV order k1, k2, p1, p2[, k3, ...]; or k1..k4 of the fisheye / equidistant model) is
remapped per frame with maps built once (cv2.initUndistortRectifyMap, cv2.fisheye.initUndistortRectifyMap).

Choice of the new pinhole K (`Undistorter.K_new`):
- default (`alpha=None`): the original K, scaled to the output size. The image keeps its scale and principal point;
  barrel-distorted corners that fall outside the output are cropped, pincushion borders get black pixels.
- `alpha` in [0, 1]: cv2.getOptimalNewCameraMatrix (fisheye: `balance` of
  cv2.fisheye.estimateNewCameraMatrixForUndistortRectify): 0 keeps only valid pixels, 1 keeps every source pixel.
- `K_new`: an explicit 3x3 for the output size.
Depth is remapped with nearest-neighbour lookups (no mixed depths at edges), 0 where no source pixel maps.
With no non-zero coefficient and the same size and K, `image` / `depth` return their input unchanged.
"""

from __future__ import annotations

import logging

import numpy as np

from recon.errors import ConfigError
from recon.types import CameraInfo, Frame

logger = logging.getLogger(__name__)

FISHEYE_MODELS = ("equidistant", "fisheye", "kannala_brandt")


def has_distortion(info: CameraInfo | None) -> bool:
    """True when `info` has any non-zero distortion coefficient."""
    return info is not None and info.distortion.size > 0 and bool(np.any(info.distortion != 0))


class Undistorter:
    """Remaps images of one camera to the undistorted pinhole camera `K_new` (built once, applied per frame).

    Args:
        info: the distorted camera (size, K and coefficients).
        size: output (width, height); default: the input size.
        K_new: intrinsics of the output (pixels of the output size); overrides `alpha`.
        alpha: free scaling in [0, 1] for the new K (see the module doc); None keeps the input K (scaled).
        model: distortion model: "plumb_bob" / "rational_polynomial" (default, cv2 pinhole model, any number of
            coefficients) or "equidistant" / "fisheye" (cv2.fisheye, 4 coefficients k1..k4).
    """

    def __init__(self, info: CameraInfo, size: tuple[int, int] | None = None, *, K_new: np.ndarray | None = None,
                 alpha: float | None = None, model: str | None = None) -> None:
        import cv2

        self.info = info
        in_size = (int(info.width), int(info.height))
        self.size = in_size if size is None else (int(size[0]), int(size[1]))
        self.fisheye = (model or "plumb_bob").lower() in FISHEYE_MODELS
        dist = info.distortion
        if self.fisheye:
            if dist.size < 4:
                raise ConfigError(f"fisheye undistortion needs 4 coefficients k1..k4, got {dist.size}")
            dist = dist[:4].reshape(4, 1)
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"undistortion alpha must be in [0, 1], got {alpha}")
        if K_new is not None:
            self.K_new = np.asarray(K_new, dtype=np.float64).reshape(3, 3)
        elif alpha is not None and self.fisheye:
            self.K_new = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(
                info.K, dist, in_size, np.eye(3), balance=alpha, new_size=self.size)
        elif alpha is not None and dist.size:
            self.K_new, _ = cv2.getOptimalNewCameraMatrix(info.K, dist, in_size, alpha, self.size)
        else:
            self.K_new = info.scaled(*self.size).K if self.size != in_size else info.K.copy()
        self.identity = (not has_distortion(info) and self.size == in_size and np.allclose(self.K_new, info.K))
        if self.identity:
            return
        if self.fisheye:
            maps = [cv2.fisheye.initUndistortRectifyMap(info.K, dist, np.eye(3), self.K_new, self.size, t)
                    for t in (cv2.CV_16SC2, cv2.CV_32FC1)]
        else:
            d = dist if dist.size else None
            maps = [cv2.initUndistortRectifyMap(info.K, d, None, self.K_new, self.size, t)
                    for t in (cv2.CV_16SC2, cv2.CV_32FC1)]
        self._map1, self._map2 = maps[0]
        self._nearest = maps[1]

    def __str__(self) -> str:
        kind = "fisheye" if self.fisheye else "pinhole"
        return (f"Undistorter({kind}, {self.info.width}x{self.info.height} -> {self.size[0]}x{self.size[1]}, "
                f"fx={self.K_new[0, 0]:.1f} fy={self.K_new[1, 1]:.1f}{', no-op' if self.identity else ''})")

    @property
    def camera_info(self) -> CameraInfo:
        """The pinhole camera the output images belong to (no distortion)."""
        return CameraInfo(self.size[0], self.size[1], self.K_new, np.zeros(0), self.info.frame_id)

    def image(self, image_hw3: np.ndarray) -> np.ndarray:
        """Undistorted uint8 image (bilinear; black where no source pixel maps); the input itself on the no-op path."""
        import cv2

        self._check(image_hw3)
        if self.identity:
            return image_hw3
        return cv2.remap(image_hw3, self._map1, self._map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def depth(self, depth_hw: np.ndarray) -> np.ndarray:
        """Undistorted depth (nearest neighbour, 0 outside the source image); the input itself on the no-op path."""
        import cv2

        self._check(depth_hw)
        if self.identity:
            return depth_hw
        return cv2.remap(depth_hw, self._nearest[0], self._nearest[1], cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _check(self, array: np.ndarray) -> None:
        if array.shape[:2] != (self.info.height, self.info.width):
            raise ConfigError(f"undistortion was set up for {self.info.width}x{self.info.height} images, got "
                              f"{array.shape[1]}x{array.shape[0]}")


class FrameUndistorter:
    """Frames of a distorted camera remapped to its pinhole camera, the one rule for every front end (the camera
    node before the wire, the ROS node before the backend).

    A frame the size of its CameraInfo with non-zero distortion gets its image (and depth) remapped and carries
    `K_new`; a frame of another size is passed as captured, with one warning; a distortion-free camera only gives
    its K to frames without one. The remap tables are built once per CameraInfo object.
    """

    def __init__(self, owner: str, enabled: bool = True) -> None:
        self.owner = owner
        self.enabled = enabled
        self.undistorter: Undistorter | None = None
        self._warned = False

    def apply(self, frame: Frame, info: CameraInfo | None) -> None:
        """Undistort `frame` in place (image, depth, K) for camera `info`."""
        if info is None:
            return
        same_size = (info.width, info.height) == (frame.width, frame.height)
        if self.enabled and has_distortion(info) and not same_size:
            if not self._warned:
                self._warned = True
                logger.warning("%s: camera info is %dx%d but frames are %dx%d: frames are used without "
                               "undistortion", self.owner, info.width, info.height, frame.width, frame.height)
            return
        if same_size and self.enabled and has_distortion(info):
            if self.undistorter is None or self.undistorter.info is not info:
                self.undistorter = Undistorter(info)
                logger.info("%s: undistorting frames (distortion %s) with %s; frames carry the pinhole K",
                            self.owner, info.distortion.tolist(), self.undistorter)
            frame.image = self.undistorter.image(frame.image)
            if frame.depth is not None:
                frame.depth = self.undistorter.depth(frame.depth)
            frame.K = self.undistorter.K_new
        elif frame.K is None and same_size:
            frame.K = info.K
