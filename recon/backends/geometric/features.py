"""Sparse feature tracking shared by both modes: Shi-Tomasi corners tracked with pyramidal Lucas-Kanade.

KLT tracks give sub-pixel correspondences at video rate without descriptor matching; a forward-backward
check drops the tracks that drifted (occlusion boundaries, repeated texture). Each track keeps an integer id
so the map points and keyframe observations of both modes can refer to it.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxW luminance of a uint8 HxWx3 RGB image."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class KltTracker:
    """Corner detection and forward-backward-checked optical flow.

    Args:
        max_corners: corners kept per detection.
        min_distance: minimum pixel distance between corners (also the exclusion radius around live tracks).
        quality: Shi-Tomasi quality level relative to the strongest corner.
        win: Lucas-Kanade window size in pixels.
        levels: pyramid levels above the full image.
        fb_max: largest forward-backward disagreement (pixels) a track may have.
        block_size: Shi-Tomasi window; larger windows prefer corners that are stable across scales.
    """

    def __init__(self, max_corners: int = 400, min_distance: int = 8, quality: float = 0.01, win: int = 21,
                 levels: int = 3, fb_max: float = 0.7, block_size: int = 5) -> None:
        self.max_corners = int(max_corners)
        self.min_distance = int(min_distance)
        self.quality = float(quality)
        self.lk_params = {
            "winSize": (int(win), int(win)),
            "maxLevel": int(levels),
            "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        }
        self.fb_max = float(fb_max)
        self.block_size = int(block_size)
        self.next_id = 0

    def detect(self, gray: np.ndarray, existing_n2: np.ndarray | None = None, max_new: int | None = None,
               border: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """New corners (float32 nx2) away from `existing_n2`, and fresh track ids for them."""
        h, w = gray.shape
        mask = np.zeros((h, w), np.uint8)
        mask[border:h - border, border:w - border] = 255
        if existing_n2 is not None and len(existing_n2):
            for x, y in np.round(existing_n2).astype(int):
                cv2.circle(mask, (int(x), int(y)), self.min_distance, 0, -1)
        n = self.max_corners if max_new is None else int(max_new)
        if n <= 0:
            return np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
        pts = cv2.goodFeaturesToTrack(gray, n, self.quality, self.min_distance, mask=mask, blockSize=self.block_size)
        if pts is None:
            return np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
        pts = pts.reshape(-1, 2).astype(np.float32)
        ids = np.arange(self.next_id, self.next_id + len(pts), dtype=np.int64)
        self.next_id += len(pts)
        return pts, ids

    def track(self, prev_gray: np.ndarray, gray: np.ndarray, pts_n2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of `pts_n2` in `gray` and a boolean mask of the tracks that survived."""
        if len(pts_n2) == 0:
            return pts_n2.reshape(0, 2).astype(np.float32), np.zeros(0, bool)
        p0 = pts_n2.reshape(-1, 1, 2).astype(np.float32)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev_gray, gray, p0, None, **self.lk_params)
        p0r, st2, _ = cv2.calcOpticalFlowPyrLK(gray, prev_gray, p1, None, **self.lk_params)
        fb = np.linalg.norm((p0 - p0r).reshape(-1, 2), axis=1)
        h, w = gray.shape
        p1 = p1.reshape(-1, 2)
        ok = (st1.reshape(-1) == 1) & (st2.reshape(-1) == 1) & (fb < self.fb_max)
        ok &= (p1[:, 0] >= 0) & (p1[:, 0] <= w - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= h - 1)
        return p1, ok

    def refine(self, ref_gray: np.ndarray, gray: np.ndarray, ref_n2: np.ndarray, cur_n2: np.ndarray,
               max_shift: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
        """Re-measure tracks against their reference image (where they were seeded), starting at `cur_n2`.

        Frame-to-frame flow drifts like a random walk (a shared sub-pixel bias over hundreds of frames);
        measuring against the original appearance bounds the error. Tracks whose reference match moves more
        than `max_shift` pixels from the frame-to-frame position (appearance changed too much) are dropped.
        """
        if len(cur_n2) == 0:
            return cur_n2, np.zeros(0, bool)
        p0 = ref_n2.reshape(-1, 1, 2).astype(np.float32)
        p1 = cur_n2.reshape(-1, 1, 2).astype(np.float32).copy()
        params = dict(self.lk_params)
        params["maxLevel"] = 1
        p1, st, _ = cv2.calcOpticalFlowPyrLK(ref_gray, gray, p0, p1, flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **params)
        p1 = p1.reshape(-1, 2)
        ok = (st.reshape(-1) == 1) & (np.linalg.norm(p1 - cur_n2, axis=1) < max_shift)
        return np.where(ok[:, None], p1, cur_n2).astype(np.float32), ok
