"""The relocalisation's descriptor matching (`reloc._ratio_matches`) against OpenCV's own brute-force matcher.

It replaced `BFMatcher.knnMatch(k=2)` plus a Python ratio test; relocalisation must pick the same matches as
before, so the test compares with that path, on descriptors with exact duplicates, near duplicates (ties in
Hamming distance) and noise, and on a train set smaller than the query set. The ranking of keyframes for PnP
(`DescriptorDatabase.ranked_keyframes`) counts matched map points, not many-to-one matches.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from recon.backends.geometric.reloc import DescriptorDatabase, KeyframeDescriptors, _ratio_matches


def _knn_reference(query: np.ndarray, train: np.ndarray, ratio: float, max_distance: int = 64
                   ) -> tuple[np.ndarray, np.ndarray]:
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(query, train, k=2)
    keep = [(m[0].queryIdx, m[0].trainIdx) for m in pairs
            if len(m) == 2 and m[0].distance < ratio * m[1].distance and m[0].distance < max_distance]
    q, t = zip(*keep, strict=True) if keep else ((), ())
    return np.array(q, np.int64), np.array(t, np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio", [0.7, 0.8, 0.95])
def test_ratio_matches_equal_opencv_knn_match(seed: int, ratio: float) -> None:
    rng = np.random.default_rng(seed)
    query = rng.integers(0, 256, (400, 32), dtype=np.uint8)
    train = rng.integers(0, 256, (150, 32), dtype=np.uint8)
    train[:40] = query[:40]  # exact matches
    flips = rng.integers(0, 32, 60)
    train[40:100] = query[40:100]
    train[40:100, flips % 32] ^= 1 << (flips % 8).astype(np.uint8)  # near matches: a few bits apart
    train[100:110] = train[40:50]  # duplicates in the train set: ties the ratio test must refuse
    q, t = _ratio_matches(query, train, ratio)
    q_ref, t_ref = _knn_reference(query, train, ratio)
    assert len(q_ref) > 30  # the fixture has matches to agree on
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(t, t_ref)


def test_ratio_matches_refuse_a_single_train_row() -> None:
    """With one train descriptor there is no second neighbour: knnMatch gives one-element lists, so no match."""
    query = np.zeros((5, 32), np.uint8)
    q, t = _ratio_matches(query, query[:1], 0.8)
    assert len(q) == 0 and len(t) == 0
    assert len(_knn_reference(query, query[:1], 0.8)[0]) == 0


def test_keyframes_are_ranked_by_the_map_points_they_match() -> None:
    """A keyframe whose few descriptors attract many query corners (many-to-one) must not outrank one whose map
    points are matched one to one: relocalisation runs PnP on the first candidates only."""
    rng = np.random.default_rng(3)
    query = rng.integers(0, 256, (140, 32), dtype=np.uint8)
    crowd = rng.integers(0, 256, (25, 32), dtype=np.uint8)  # keyframe A: 25 live descriptors
    near = np.repeat(crowd[:3], 20, axis=0)  # 60 query corners a bit or two from A's first three
    bits = rng.integers(0, 256, 60)
    near[np.arange(60), bits % 32] ^= (1 << (bits % 8)).astype(np.uint8)
    query[:60] = near
    distinct = query[60:90].copy()  # keyframe B: 30 map points seen again, one corner each
    db = DescriptorDatabase(min_inliers=25)
    db.entries = [KeyframeDescriptors(0, np.arange(100, 125), crowd),
                  KeyframeDescriptors(1, np.arange(200, 230), distinct)]
    points = {i: np.zeros(3) for i in [*range(100, 125), *range(200, 230)]}
    q_a, _ = _ratio_matches(query, crowd, db.ratio)
    assert len(q_a) >= 60 > 30  # by raw matches A would come first
    ranked = db.ranked_keyframes(query, points)
    assert [entry.index for _, entry, _, _ in ranked] == [1]  # A matches 3 map points: below min_inliers
    count, _, rows, ids = ranked[0]
    assert count == 30 and len(np.unique(ids)) == 30
    np.testing.assert_array_equal(ids, np.arange(200, 230))
    np.testing.assert_array_equal(rows, np.arange(60, 90))


def test_points_gone_from_the_map_are_not_matched() -> None:
    """Descriptors of map points that were pruned or culled no longer count for their keyframe."""
    rng = np.random.default_rng(4)
    query = rng.integers(0, 256, (80, 32), dtype=np.uint8)
    db = DescriptorDatabase(min_inliers=25)
    db.entries = [KeyframeDescriptors(0, np.arange(40), query[:40].copy()),
                  KeyframeDescriptors(1, np.arange(40, 80), query[40:].copy())]
    points = {i: np.zeros(3) for i in [*range(0, 30), *range(40, 50)]}  # keyframe 1 keeps only 10 live points
    ranked = db.ranked_keyframes(query, points)
    assert [(count, entry.index) for count, entry, _, _ in ranked] == [(30, 0)]
    np.testing.assert_array_equal(ranked[0][3], np.arange(30))
