"""Two-view RANSAC models from OpenCV, with the degenerate configurations turned into "no model".

OpenCV's five-point solver has no answer when the two views share their centre (zero parallax: a camera that did
not move, a revisit of the very same view): 4.x returns some essential matrix, 5.x raises from its polynomial
solver (`solvePoly` assertion). Callers want the same thing from both: None when there is no essential matrix,
and, for match verification, the pixel-consistent matches of the low-parallax model (a homography) instead.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_POINTS = 8  # five-point RANSAC needs 5; 8 keeps the inlier count meaningful


def essential_ransac(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, threshold_px: float,
                     prob: float = 0.999) -> tuple[np.ndarray, np.ndarray] | None:
    """(E [3,3], inlier mask [n] bool) of `p1^T K^-T E K^-1 p0 = 0`, or None when the pair has no essential matrix."""
    if len(p0) < MIN_POINTS:
        return None
    a, b = np.ascontiguousarray(p0, np.float64), np.ascontiguousarray(p1, np.float64)
    try:
        E, mask = cv2.findEssentialMat(a, b, np.asarray(K, np.float64), method=cv2.RANSAC, prob=prob,
                                       threshold=threshold_px)
    except cv2.error:  # degenerate configuration (OpenCV 5 raises where 4 returned a meaningless E)
        return None
    if E is None or mask is None or E.shape[0] < 3 or E.shape[1] != 3:
        return None
    return E[:3], mask.reshape(-1).astype(bool)


def consistent_matches(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, threshold_px: float) -> np.ndarray:
    """Matches [n] bool that one rigid two-view model explains: the essential matrix's inliers, or, when the views
    have no essential matrix (zero parallax), a homography's, which is the right model for them."""
    if len(p0) < MIN_POINTS:
        return np.zeros(len(p0), bool)
    model = essential_ransac(p0, p1, K, threshold_px)
    if model is not None:
        return model[1]
    a, b = np.ascontiguousarray(p0, np.float64), np.ascontiguousarray(p1, np.float64)
    try:
        H, mask = cv2.findHomography(a, b, cv2.RANSAC, threshold_px)
    except cv2.error:
        return np.zeros(len(p0), bool)
    if H is None or mask is None:
        return np.zeros(len(p0), bool)
    return mask.reshape(-1).astype(bool)
