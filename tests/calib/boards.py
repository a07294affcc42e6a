"""Calibration boards rendered through a known camera (K and lens distortion), for the calibration tests.

Each output pixel is traced backwards: its undistorted ray (cv2.undistortPoints / cv2.fisheye.undistortPoints on
a supersampled pixel grid, computed once per camera) meets the board plane through the inverse of the homography
K-free `[r1 r2 t]`, and the board texture is sampled there; the supersampled image is then area-averaged, so edges
are anti-aliased and corners land at sub-pixel positions as in a real photo.
"""

from __future__ import annotations

import cv2
import numpy as np

from recon.geometry.transforms import so3_exp


def checkerboard_texture(cols: int, rows: int, px: int = 40, margin: int = 40) -> np.ndarray:
    """A checkerboard with `cols` x `rows` inner corners, `px` pixels per square, white margin."""
    squares = np.indices((rows + 1, cols + 1)).sum(axis=0) % 2
    board = np.kron(squares, np.ones((px, px))).astype(np.uint8) * 255
    return np.pad(board, margin, constant_values=255)


def charuco_texture(board: object, px: int = 60, margin: int = 30) -> np.ndarray:
    sx, sy = board.getChessboardSize()  # type: ignore[attr-defined]
    return board.generateImage((sx * px + 2 * margin, sy * px + 2 * margin), marginSize=margin)  # type: ignore


class Renderer:
    """Renders a planar texture (`px` texture pixels per board square of `square` metres) through one camera."""

    def __init__(self, K: np.ndarray, dist: np.ndarray, size: tuple[int, int], *, fisheye: bool = False,
                 supersample: int = 3) -> None:
        self.K, self.dist, self.size, self.fisheye, self.s = np.asarray(K, float), np.asarray(dist, float), size, \
            fisheye, supersample
        w, h = size
        s = supersample
        # Sub-pixel sample centres of pixel (x, y), pixel centres at integers (OpenCV's convention).
        xs = (np.arange(w * s) + 0.5) / s - 0.5
        ys = (np.arange(h * s) + 0.5) / s - 0.5
        grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 1, 2)
        if fisheye:
            und = cv2.fisheye.undistortPoints(grid, self.K, self.dist.reshape(4, 1))
        else:
            # Explicit iteration criteria: OpenCV 4 has them in `undistortPointsIter`, 5 in `undistortPoints`.
            criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
            if hasattr(cv2, "undistortPointsIter"):
                und = cv2.undistortPointsIter(grid, self.K, self.dist, None, None, criteria)
            else:
                und = cv2.undistortPoints(grid, self.K, self.dist, criteria=criteria)
        self.rays = np.concatenate([und.reshape(h * s, w * s, 2), np.ones((h * s, w * s, 1))], -1)

    def render(self, texture: np.ndarray, px_per_m: float, margin: int, R: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Grey uint8 image of the texture's board (origin at the texture's first square corner) at pose (R, t),
        board -> camera; background mid grey."""
        H = np.column_stack([R[:, 0], R[:, 1], t])  # board (X, Y, 1) -> camera ray, up to scale
        XY1 = self.rays @ np.linalg.inv(H).T
        in_front = XY1[..., 2] > 0
        XY = XY1[..., :2] / XY1[..., 2:3]
        # Board metres -> texture pixel coordinates (pixel centres at integers; square edges at pixel edges).
        map_x = (margin + XY[..., 0] * px_per_m - 0.5).astype(np.float32)
        map_y = (margin + XY[..., 1] * px_per_m - 0.5).astype(np.float32)
        map_x[~in_front] = -1e6
        big = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=128)
        return cv2.resize(big, self.size, interpolation=cv2.INTER_AREA)

    def project(self, pts_board: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
        rvec, _ = cv2.Rodrigues(R)
        pts = pts_board.reshape(-1, 1, 3).astype(np.float64)
        if self.fisheye:
            uv, _ = cv2.fisheye.projectPoints(pts, rvec, t.reshape(3, 1), self.K, self.dist.reshape(4, 1))
        else:
            uv, _ = cv2.projectPoints(pts, rvec, t, self.K, self.dist)
        return uv.reshape(-1, 2)


def board_poses(rng: np.random.Generator, n: int, extent_m: tuple[float, float], renderer: Renderer,
                distance: tuple[float, float] = (0.45, 0.8), max_tilt_deg: float = 35.0) -> list[tuple]:
    """`n` random board poses (R, t) that keep the whole board inside the image with a 10 % margin."""
    w, h = renderer.size
    ex, ey = extent_m
    corners = np.array([[0, 0, 0], [ex, 0, 0], [0, ey, 0], [ex, ey, 0]], float)
    poses = []
    while len(poses) < n:
        tilt = np.radians(rng.uniform(-max_tilt_deg, max_tilt_deg, 2))
        R = so3_exp(np.array([tilt[0], tilt[1], rng.uniform(-0.3, 0.3)]))
        z = rng.uniform(*distance)
        centre = np.array([rng.uniform(-0.25, 0.25) * z, rng.uniform(-0.2, 0.2) * z, z])
        t = centre - R @ np.array([ex / 2, ey / 2, 0])
        uv = renderer.project(corners, R, t)
        if (uv[:, 0] > 0.1 * w).all() and (uv[:, 0] < 0.9 * w).all() and (uv[:, 1] > 0.1 * h).all() \
                and (uv[:, 1] < 0.9 * h).all():
            poses.append((R, t))
    return poses
