"""Timestamp association (one-to-one, closest first, within a maximum difference: `recon.utils.timestamps`, the
TUM reader's RGB-depth pairing) and pose lookup at frame times."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recon.datasets.association import poses_at
from recon.datasets.files import natural_key, timestamp_from_name
from recon.geometry import make_se3, rotation_angle, so3_exp
from recon.io.trajectory import seconds_to_ns
from recon.utils.timestamps import associate_timestamps

MS = 1_000_000


def associate(t_a: np.ndarray, t_b: np.ndarray, max_diff_ns: int) -> list[tuple[int, int]]:
    """The pairs (index into a, index into b) in a's order, as the TUM reader takes them."""
    assoc = associate_timestamps(t_a, t_b, max_diff_ns)
    return sorted(zip(assoc.idx_pred.tolist(), assoc.idx_gt.tolist(), strict=True))


def test_associate_pairs_nearest_within_max_diff() -> None:
    rgb = np.array([0, 33, 66, 100, 133]) * MS
    depth = np.array([2, 30, 70, 160]) * MS  # 100 ms has nothing within 20 ms; 133 ms neither
    assert associate(rgb, depth, 20 * MS) == [(0, 0), (1, 1), (2, 2)]
    assert associate(rgb, depth, 1 * MS) == []
    assert associate(rgb, np.array([], dtype=np.int64), 20 * MS) == []


def test_associate_is_one_to_one_and_closest_pair_wins() -> None:
    # Both a[0] and a[1] are within 10 ms of b[0]; a[1] is closer, so it gets b[0] and a[0] gets nothing.
    a = np.array([0, 6]) * MS
    b = np.array([8]) * MS
    assert associate(a, b, 10 * MS) == [(1, 0)]
    # Unsorted input: indices refer to the given order.
    assert associate(np.array([30, 0]) * MS, np.array([1, 29]) * MS, 5 * MS) == [(0, 1), (1, 0)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=0, max_size=30, unique=True),
       st.lists(st.integers(0, 10_000), min_size=0, max_size=30, unique=True),
       st.integers(0, 500))
def test_associate_properties(a: list[int], b: list[int], max_diff: int) -> None:
    pairs = associate(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), max_diff)
    ia = [i for i, _ in pairs]
    ib = [j for _, j in pairs]
    assert len(set(ia)) == len(ia) and len(set(ib)) == len(ib)  # one-to-one
    assert all(abs(a[i] - b[j]) <= max_diff for i, j in pairs)
    assert ia == sorted(ia)
    # Maximal: no unpaired a has an unpaired b within max_diff (greedy matching leaves no free compatible pair).
    free_a = set(range(len(a))) - set(ia)
    free_b = set(range(len(b))) - set(ib)
    assert not any(abs(a[i] - b[j]) <= max_diff for i in free_a for j in free_b)


def test_poses_at_interpolates_and_respects_max_gap() -> None:
    t = np.array([0, 10, 20, 100]) * MS
    T = np.stack([make_se3(so3_exp(np.array([0, 0, 0.1 * k])), np.array([float(k), 0, 0])) for k in range(4)])
    out = poses_at(np.array([10, 15, 60, 97, 200]) * MS, t, T, max_diff_ns=10 * MS)
    np.testing.assert_allclose(out[0], T[1])  # exact sample
    np.testing.assert_allclose(out[1][:3, 3], [1.5, 0, 0])  # halfway between samples 1 and 2
    np.testing.assert_allclose(rotation_angle(out[1][:3, :3]), 0.15, atol=1e-9)  # slerp halfway
    assert out[2] is None  # 40 ms from both neighbours
    np.testing.assert_allclose(out[3], T[3])  # only the nearest sample is within the gap
    assert out[4] is None


def test_timestamp_parsing_is_exact() -> None:
    assert seconds_to_ns("1305031102.175304") == 1_305_031_102_175_304_000
    assert seconds_to_ns("0.1") == 100_000_000
    assert seconds_to_ns("1.0370000e-01") == 103_700_000
    assert timestamp_from_name("1403636579763555584") == 1_403_636_579_763_555_584  # EuRoC-style ns
    assert timestamp_from_name("frame_000123") is None
    assert sorted(["img10", "img2", "img1"], key=natural_key) == ["img1", "img2", "img10"]
