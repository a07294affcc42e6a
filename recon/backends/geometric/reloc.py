"""Relocalisation of the monocular tracker: ORB descriptors of keyframes' map points, matched when KLT fails.

Why: frame-to-frame optical flow breaks on fast motion, blur and occlusion, and the tracker used to continue
from a guessed pose. Descriptors survive large image motion: each keyframe stores upright ORB descriptors
computed at its tracked map points (KLT corners have no orientation; hand-held cameras roll little), and a
query frame is described the same way at its own Shi-Tomasi corners. A frame whose KLT tracks give no pose is
matched against the keyframes (Hamming distance, ratio test), those matching most map points first (the local
window is among them, so this is also matching against the local map), and posed by RANSAC PnP without a motion
prior. The inlier matches become the frame's new tracks, carrying the map points' ids.

One database per map: after a re-initialisation the lost map's database is still tried (MonoVO) until the new
map is initialised, so a camera that comes back to the old map continues in it, with its scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from recon.backends.geometric.pnp import T_from_rt, solve_pnp

logger = logging.getLogger(__name__)


@dataclass
class KeyframeDescriptors:
    """ORB descriptors of one keyframe's map-point observations."""

    index: int
    ids: np.ndarray  # int64 [n] map point (track) ids
    desc: np.ndarray  # uint8 [n,32]


@dataclass
class Relocalisation:
    """A pose found by descriptor matching: T_cw, the matched map point ids and their pixels in the frame."""

    T_cw: np.ndarray
    ids: np.ndarray
    pts: np.ndarray
    keyframe: int


class DescriptorDatabase:
    """Keyframe descriptors and the matching + PnP that poses a frame against them.

    Args:
        max_keyframes: keyframes kept (oldest dropped); n_features: ORB keypoints detected in a query frame.
        ratio: Lowe ratio test; candidates: keyframes tried by PnP (most matches first).
        min_inliers: PnP inliers needed; reproj_px: PnP inlier threshold.
    """

    def __init__(self, max_keyframes: int = 200, n_features: int = 1500, ratio: float = 0.8, candidates: int = 4,
                 min_inliers: int = 25, reproj_px: float = 3.0) -> None:
        self.max_keyframes = int(max_keyframes)
        self.n_features = int(n_features)
        self.ratio = float(ratio)
        self.candidates = int(candidates)
        self.min_inliers = int(min_inliers)
        self.reproj_px = float(reproj_px)
        self.entries: list[KeyframeDescriptors] = []
        self.attempts = 0
        self.successes = 0

    def _orb(self) -> cv2.ORB:
        return cv2.ORB_create(nfeatures=self.n_features, scaleFactor=1.2, nlevels=8, edgeThreshold=19,
                              patchSize=19, fastThreshold=12)

    def clear(self) -> None:
        self.entries = []

    def add(self, index: int, gray: np.ndarray, ids: np.ndarray, pts: np.ndarray) -> None:
        """Describe keyframe `index` at its map points' pixels (ORB drops those too near the border)."""
        if len(ids) == 0:
            return
        # Upright descriptors (angle -1: ORB keeps the given orientation); class_id carries the row back, since
        # compute() drops keypoints without a full patch.
        kps = [cv2.KeyPoint(float(x), float(y), 19.0, -1, 0, 0, k) for k, (x, y) in enumerate(pts)]
        kept, desc = self._orb().compute(gray, kps)
        if desc is None or not kept:
            return
        rows = np.array([k.class_id for k in kept], np.int64)
        kid, good = ids[rows], np.ones(len(rows), bool)
        self.entries.append(KeyframeDescriptors(int(index), kid[good], desc[good]))
        self.entries = self.entries[-self.max_keyframes:]

    def ranked_keyframes(self, desc: np.ndarray, points: dict[int, np.ndarray]
                         ) -> list[tuple[int, KeyframeDescriptors, np.ndarray, np.ndarray]]:
        """Keyframes with at least `min_inliers` matched map points, most first: (count, keyframe, query rows,
        map point ids), one query descriptor per map point (the first, best-ranked corner).

        Ranked by map points matched, not by raw matches: against a keyframe with few live descriptors many
        query corners pass the ratio test onto the same few points, and that raw count put such keyframes first
        (on live runs usually above the keyframe PnP then posed the frame against, so most of an attempt's
        RANSACs were spent on them).
        """
        scored = []
        for entry, alive in zip(self.entries, _alive_rows(self.entries, points), strict=True):
            if alive.sum() < self.min_inliers:
                continue
            q, t = _ratio_matches(desc, entry.desc[alive], self.ratio)
            mids, first = np.unique(entry.ids[alive][t], return_index=True)
            if len(mids) >= self.min_inliers:
                scored.append((len(mids), entry, q[first], mids))
        scored.sort(key=lambda s: -s[0])
        return scored

    def relocalise(self, gray: np.ndarray, points: dict[int, np.ndarray], K: np.ndarray,
                   guess_cw: np.ndarray | None = None) -> Relocalisation | None:
        """Pose of `gray` against the stored keyframes, or None when no keyframe gives enough PnP inliers."""
        if not self.entries:
            return None
        self.attempts += 1
        # The same corners (Shi-Tomasi) and upright descriptors as the keyframes': FAST keypoints would land
        # beside the tracked corners and describe other patches.
        corners = cv2.goodFeaturesToTrack(gray, self.n_features, 0.005, 5, blockSize=5)
        if corners is None:
            return None
        kps = [cv2.KeyPoint(float(x), float(y), 19.0, -1, 0, 0) for x, y in corners.reshape(-1, 2)]
        kps, desc = self._orb().compute(gray, kps)
        if desc is None or len(kps) < self.min_inliers:
            return None
        uv = np.array([k.pt for k in kps], np.float64)
        for _, entry, q, mids in self.ranked_keyframes(desc, points)[:self.candidates]:
            X = np.stack([points[int(i)] for i in mids])
            res = _pnp_without_prior(X, uv[q], K, self.reproj_px, self.min_inliers)
            if res is None and guess_cw is not None:
                res = solve_pnp(X, uv[q], K, guess_cw, reproj_px=self.reproj_px, min_inliers=self.min_inliers)
            if res is None:
                continue
            T_cw, inl = res
            self.successes += 1
            logger.debug("relocalised against keyframe %d: %d of %d matches are PnP inliers", entry.index,
                         int(inl.sum()), len(q))
            return Relocalisation(T_cw, mids[inl], uv[q][inl].astype(np.float32), entry.index)
        return None


def _alive_rows(entries: list[KeyframeDescriptors], points: dict[int, np.ndarray]) -> list[np.ndarray]:
    """Per keyframe, which of its described map points are still in the map (one set lookup for all)."""
    ids = np.concatenate([e.ids for e in entries])
    alive = np.isin(ids, np.fromiter(points.keys(), np.int64, len(points)))
    return np.split(alive, np.cumsum([len(e.ids) for e in entries[:-1]]))


def _ratio_matches(query: np.ndarray, train: np.ndarray, ratio: float,
                   max_distance: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Query and train rows of the nearest-neighbour matches that pass Lowe's ratio test (Hamming distance).

    `cv2.batchDistance` with K=2 is what `BFMatcher.knnMatch(k=2)` computes (the same neighbours, in the same
    order), but returns arrays: the ratio test runs in numpy instead of over a Python list of `DMatch` pairs per
    keyframe tried. A small saving (a few ms of an attempt at 640x480).
    """
    if len(train) < 2:  # no second neighbour to compare with (knnMatch gives one-element lists)
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dist, nearest = cv2.batchDistance(query, train, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2)
    best, second = dist[:, 0], dist[:, 1]
    ok = (best < ratio * second) & (best < max_distance)
    return np.flatnonzero(ok), nearest[ok, 0].astype(np.int64)


def _usac_params(reproj_px: float, iterations: int = 200) -> cv2.UsacParams:
    """OpenCV's USAC for PnP: uniform sampling, MSAC scoring, no local optimisation (the LM refinement of
    `solve_pnp` follows), serial, and OpenCV's fixed default random state (deterministic)."""
    params = cv2.UsacParams()
    params.threshold = float(reproj_px)
    params.confidence = 0.999
    params.maxIterations = int(iterations)
    params.sampler = cv2.SAMPLING_UNIFORM
    params.score = cv2.SCORE_METHOD_MSAC
    params.loMethod = cv2.LOCAL_OPTIM_NULL
    return params


def _pnp_without_prior(X: np.ndarray, uv: np.ndarray, K: np.ndarray, reproj_px: float,
                       min_inliers: int) -> tuple[np.ndarray, np.ndarray] | None:
    """RANSAC PnP without a motion prior, refined like `solve_pnp` from the RANSAC pose.

    USAC rather than the classic EPnP RANSAC (`flags=SOLVEPNP_EPNP`): most candidates of a live stream's attempts
    are wrong keyframes, where the classic loop runs all its iterations; on 108 attempts captured from live runs
    (432 candidates) USAC posed exactly the same candidates (118), at the same refined poses, in a third of the
    time on failures (2.6 against 8.6 ms per candidate).
    """
    if len(X) < max(6, min_inliers):
        return None
    try:
        ok, _, rvec, tvec, inl = cv2.solvePnPRansac(np.ascontiguousarray(X, np.float64), np.ascontiguousarray(uv),
                                                    K, None, params=_usac_params(reproj_px))
    except cv2.error:
        return None
    if not ok or inl is None or len(inl) < min_inliers:
        return None
    return solve_pnp(X, uv, K, T_from_rt(rvec, tvec), reproj_px=reproj_px, min_inliers=min_inliers)
