"""Trajectory accuracy of a backend's results, shared by the geometric monocular tests."""

from __future__ import annotations

import numpy as np

from recon.eval.trajectory import absolute_trajectory_error, trajectory_length
from recon.types import FrameResult


def ate_percent(results: dict[int, FrameResult], gt: np.ndarray) -> float:
    """Sim(3)-aligned ATE of the tracked results (by seq) as % of the ground-truth path over the same frames."""
    seqs = sorted(s for s, r in results.items() if r.tracked)
    est = np.stack([results[s].T_world_cam for s in seqs])
    ate = absolute_trajectory_error(est, gt[seqs], "sim3")
    return 100.0 * ate.rmse / trajectory_length(gt[seqs])
