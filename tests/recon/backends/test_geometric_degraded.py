"""RGB-D accuracy of the `geometric` backend on degraded synthetic footage (issue 13's RGB-D goal).

The goal on real Kinect-class footage is ATE <= 3.0 cm on a 7 m hand-held path. Scaled to the path: the same
ratio, 3.0 / 700 = 0.43 % of the path length, on a realistic rendering (`Degradations.realistic()`: Kinect
depth noise growing with z^2, disparity quantisation, depth holes, motion blur, exposure and white-balance
drift, sensor noise, JPEG). Proportional scaling is the strict choice for a path shorter than 7 m: odometry
error has a floor from depth noise that does not shrink with the path, so a short path is harder to keep
within the same ratio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recon.backends import create_backend
from recon.datasets import open_sequence
from recon.eval.trajectory import absolute_trajectory_error, trajectory_length

GOAL_RATIO = 0.03 / 7.0  # 3.0 cm on 7 m


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recon.datasets.degrade import Degradations
    from recon.datasets.synthetic import generate_sequence

    return generate_sequence(tmp_path_factory.mktemp("degraded") / "walk", seed=0, trajectory="walk",
                             num_frames=150, width=320, height=240, supersample=1,
                             degradations=Degradations.realistic())


def _ate(path: Path, **rgbd: object) -> tuple[float, float, np.ndarray]:
    sequence = open_sequence(path)
    backend = create_backend("geometric", mode="rgbd", rgbd=rgbd)
    results = [r for f in sequence for r in backend.step(f)]
    est = np.stack([r.T_world_cam for r in results])
    gt = sequence.ground_truth.T_world_cam
    assert len(est) == len(gt)
    ate = absolute_trajectory_error(est, gt, "se3")
    return ate.rmse, trajectory_length(gt), np.array([r.tracked for r in results])


def test_rgbd_on_realistic_kinect_footage_meets_the_goal_ratio(walk: Path) -> None:
    rmse, length, tracked = _ate(walk)
    assert tracked.all()
    assert length > 2.0  # a path long enough for drift to matter
    assert rmse <= GOAL_RATIO * length, (rmse, length)


def test_depth_fusion_beats_single_sample_map_points(walk: Path) -> None:
    """Map points averaged over their observations (fuse_depth, the default) track better than points that
    keep the one noisy depth sample of their keyframe."""
    fused, _, _ = _ate(walk)
    single, _, _ = _ate(walk, fuse_depth=False)
    assert fused < 0.9 * single, (fused, single)
