"""Ground truth at frame times for readers: `poses_at` interpolates a pose track at query timestamps.

One-to-one pairing of two timestamp lists (RGB with depth) is `recon.utils.timestamps.associate_timestamps`.
"""

from __future__ import annotations

import numpy as np


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
