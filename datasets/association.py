"""Timestamp association between streams (RGB, depth, ground truth) that are sampled at different instants.

`associate` pairs each timestamp of one list with at most one of another, closest pairs first, within a maximum
difference, the same rule as the TUM RGB-D benchmark's associate tool (this is our own implementation, vectorised
with a sorted search instead of all pairs). `poses_at` looks ground truth up at frame times.
"""

from __future__ import annotations

import numpy as np


def associate(t_a: np.ndarray, t_b: np.ndarray, max_diff_ns: int) -> list[tuple[int, int]]:
    """One-to-one pairs (index into a, index into b) with |t_a - t_b| <= max_diff_ns, sorted by index in a.

    Candidates are the neighbours of each a in b (and of each b in a), accepted greedily from the smallest
    difference, so a timestamp of b is never reused and the closest pairs win ties of proximity.
    """
    a = np.asarray(t_a, dtype=np.int64).reshape(-1)
    b = np.asarray(t_b, dtype=np.int64).reshape(-1)
    if a.size == 0 or b.size == 0:
        return []
    order_b = np.argsort(b, kind="stable")
    sb = b[order_b]
    cand: set[tuple[int, int]] = set()
    # For each a, all b within the window (b sorted): usually 0-2 entries.
    lo = np.searchsorted(sb, a - max_diff_ns, side="left")
    hi = np.searchsorted(sb, a + max_diff_ns, side="right")
    for i in np.flatnonzero(hi > lo):
        for k in range(int(lo[i]), int(hi[i])):
            cand.add((int(i), int(order_b[k])))
    pairs = sorted(cand, key=lambda ij: (abs(int(a[ij[0]]) - int(b[ij[1]])), ij[0], ij[1]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    out = []
    for i, j in pairs:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        out.append((i, j))
    out.sort()
    return out


def poses_at(t_query_ns: np.ndarray, t_ns: np.ndarray, T_world_cam: np.ndarray,
             max_diff_ns: int) -> list[np.ndarray | None]:
    """Pose at each query time: interpolated between the bracketing samples when both lie within `max_diff_ns`
    (linear translation, spherical-linear rotation), else the nearest sample within `max_diff_ns`, else None.
    """
    from scipy.spatial.transform import Rotation, Slerp

    t = np.asarray(t_ns, dtype=np.int64)
    out: list[np.ndarray | None] = []
    if t.size == 0:
        return [None] * len(t_query_ns)
    order = np.argsort(t, kind="stable")
    t, T = t[order], np.asarray(T_world_cam, dtype=np.float64)[order]
    for tq in np.asarray(t_query_ns, dtype=np.int64):
        k = int(np.searchsorted(t, tq, side="left"))
        if k < t.size and t[k] == tq:
            out.append(T[k].copy())
            continue
        left = k - 1 if k > 0 else None
        right = k if k < t.size else None
        if left is not None and right is not None and tq - t[left] <= max_diff_ns and t[right] - tq <= max_diff_ns:
            w = (tq - t[left]) / (t[right] - t[left])
            rots = Rotation.from_matrix(np.stack([T[left, :3, :3], T[right, :3, :3]]))
            Ti = np.eye(4)
            Ti[:3, :3] = Slerp([0.0, 1.0], rots)([w]).as_matrix()[0]
            Ti[:3, 3] = (1 - w) * T[left, :3, 3] + w * T[right, :3, 3]
            out.append(Ti)
            continue
        best = min((c for c in (left, right) if c is not None), key=lambda c: abs(int(t[c]) - int(tq)))
        out.append(T[best].copy() if abs(int(t[best]) - int(tq)) <= max_diff_ns else None)
    return out
