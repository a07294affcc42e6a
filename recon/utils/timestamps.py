"""Timestamp association between two streams sampled at different instants (RGB and depth, estimate and ground
truth): the one implementation, used by the TUM reader (`recon.datasets.tum`) and the trajectory evaluation
(`recon.eval.trajectory`). It follows the TUM RGB-D benchmark's associate tool (greedy on the time difference,
each stamp used once), vectorised with a sorted search instead of all pairs; it is our own code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.errors import ConfigError


@dataclass(frozen=True)
class Association:
    """Matched pose indices of two timestamped trajectories, sorted by ground-truth time.

    Attributes:
        idx_pred, idx_gt: int64 [M] indices into the prediction and the ground truth.
        dt_ns: int64 [M] t_pred - t_gt of each match.
    """

    idx_pred: np.ndarray
    idx_gt: np.ndarray
    dt_ns: np.ndarray

    def __len__(self) -> int:
        return int(self.idx_pred.size)


def associate_timestamps(t_pred_ns: np.ndarray, t_gt_ns: np.ndarray, max_diff_ns: int = 10_000_000) -> Association:
    """One-to-one matching of timestamps with |t_pred - t_gt| <= max_diff_ns, closest pairs first.

    Like TUM's associate.py (greedy on the time difference, each stamp used at most once), so a ground truth
    sampled faster than the camera never pairs one estimate with two ground-truth poses. The default 10 ms is
    evo's default `t_max_diff`. Inputs need not be sorted.
    """
    t_pred = np.asarray(t_pred_ns, dtype=np.int64).reshape(-1)
    t_gt = np.asarray(t_gt_ns, dtype=np.int64).reshape(-1)
    if max_diff_ns < 0:
        raise ConfigError(f"max_diff_ns must be >= 0, got {max_diff_ns}")
    order_gt = np.argsort(t_gt, kind="stable")
    gt_sorted = t_gt[order_gt]
    lo = np.searchsorted(gt_sorted, t_pred - max_diff_ns, side="left")
    hi = np.searchsorted(gt_sorted, t_pred + max_diff_ns, side="right")
    counts = hi - lo
    if counts.sum() == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Association(empty, empty.copy(), empty.copy())
    cand_pred = np.repeat(np.arange(t_pred.size), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cand_gt = order_gt[np.repeat(lo, counts) + offsets]
    diff = np.abs(t_pred[cand_pred] - t_gt[cand_gt])
    order = np.lexsort((cand_gt, cand_pred, diff))  # smallest difference first; ties broken by index
    used_pred = np.zeros(t_pred.size, dtype=bool)
    used_gt = np.zeros(t_gt.size, dtype=bool)
    pairs = []
    for k in order:
        i, j = cand_pred[k], cand_gt[k]
        if not used_pred[i] and not used_gt[j]:
            used_pred[i] = used_gt[j] = True
            pairs.append((i, j))
    pairs_arr = np.asarray(pairs, dtype=np.int64)
    pairs_arr = pairs_arr[np.lexsort((pairs_arr[:, 0], t_gt[pairs_arr[:, 1]]))]
    idx_pred, idx_gt = pairs_arr[:, 0], pairs_arr[:, 1]
    return Association(idx_pred, idx_gt, t_pred[idx_pred] - t_gt[idx_gt])
