"""Undistortion of images from cameras with lens distortion, so everything downstream sees a pinhole camera.

The models and the geometric backend assume pinhole images with intrinsics K. A camera whose CameraInfo carries
distortion coefficients (OpenCV order k1, k2, p1, p2[, k3, ...]) is remapped once per frame with maps built once
(cv2.initUndistortRectifyMap); the new K keeps the original focal lengths and principal point (`alpha = 0`
semantics: every output pixel is valid, the border regions that would need extrapolation are cropped away by
construction of the same-K remap). Depth is remapped with nearest-neighbour lookups (no mixed depths at edges).
"""

from __future__ import annotations

import logging

import numpy as np

from recon.types import CameraInfo

logger = logging.getLogger(__name__)


def has_distortion(info: CameraInfo | None) -> bool:
    """True when `info` has any non-zero distortion coefficient."""
    return info is not None and info.distortion.size > 0 and bool(np.any(info.distortion != 0))


class Undistorter:
    """Remaps images of one camera to the undistorted pinhole camera `K_new` (built once, applied per frame).

    Args:
        info: the distorted camera (size and coefficients).
        K_new: intrinsics of the output; default: the input K (same image size).
    """

    def __init__(self, info: CameraInfo, K_new: np.ndarray | None = None) -> None:
        import cv2

        self.info = info
        self.K_new = np.asarray(info.K if K_new is None else K_new, dtype=np.float64)
        size = (int(info.width), int(info.height))
        self._map1, self._map2 = cv2.initUndistortRectifyMap(info.K, info.distortion, None, self.K_new, size,
                                                             cv2.CV_16SC2)
        self._nearest = cv2.initUndistortRectifyMap(info.K, info.distortion, None, self.K_new, size, cv2.CV_32FC1)

    @property
    def camera_info(self) -> CameraInfo:
        """The pinhole camera the output images belong to."""
        return CameraInfo(self.info.width, self.info.height, self.K_new, np.zeros(0), self.info.frame_id)

    def image(self, image_hw3: np.ndarray) -> np.ndarray:
        """Undistorted uint8 image (bilinear)."""
        import cv2

        self._check(image_hw3)
        return cv2.remap(image_hw3, self._map1, self._map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def depth(self, depth_hw: np.ndarray) -> np.ndarray:
        """Undistorted depth (nearest neighbour, 0 outside the source image)."""
        import cv2

        self._check(depth_hw)
        return cv2.remap(depth_hw, self._nearest[0], self._nearest[1], cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _check(self, array: np.ndarray) -> None:
        if array.shape[:2] != (self.info.height, self.info.width):
            from recon.errors import ConfigError

            raise ConfigError(f"undistortion was set up for {self.info.width}x{self.info.height} images, got "
                              f"{array.shape[1]}x{array.shape[0]}")
