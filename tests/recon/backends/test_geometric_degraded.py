"""RGB-D odometry of the `geometric` backend on degraded synthetic footage (issue 13).

A realistic rendering (`Degradations.realistic()`: Kinect depth noise growing with z^2, disparity
quantisation, depth holes, motion blur, exposure and white-balance drift, sensor noise, JPEG) of a fast
hand-held walk (3x the speed: about 5 cm and 2 degrees per frame), 75 frames at 320x240 (about 2.3 m).
The issue's goal ratio (3.0 cm on 7 m = 0.43 % of the path) is measured by `recon bench geometric --suite`
on longer sequences (docs/benchmarks.md), not asserted here: rendering a long enough path takes minutes on
the 2 shared development cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recon.backends import create_backend
from recon.datasets import open_sequence
from recon.eval.trajectory import absolute_trajectory_error, trajectory_length


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recon.datasets.degrade import Degradations
    from recon.datasets.synthetic import generate_sequence

    return generate_sequence(tmp_path_factory.mktemp("degraded") / "walk", seed=1, trajectory="walk",
                             num_frames=75, width=320, height=240, supersample=1,
                             degradations=Degradations.realistic(speed=3.0))


def _ate(path: Path, **rgbd: object) -> tuple[float, float, np.ndarray]:
    sequence = open_sequence(path)
    backend = create_backend("geometric", mode="rgbd", rgbd=rgbd)
    results = [r for f in sequence for r in backend.step(f)]
    est = np.stack([r.T_world_cam for r in results])
    gt = sequence.ground_truth.T_world_cam
    assert len(est) == len(gt)
    ate = absolute_trajectory_error(est, gt, "se3")
    return ate.rmse, trajectory_length(gt), np.array([r.tracked for r in results])


def test_rgbd_tracks_every_frame_of_fast_degraded_footage(walk: Path) -> None:
    rmse, length, tracked = _ate(walk)
    assert tracked.all()
    assert length > 2.0  # a path long enough for drift to matter
    # A centimetre-level trajectory, not a lost one: 1 % of the path (the issue 2 target on clean footage).
    assert rmse <= 0.01 * length, (rmse, length)


def test_depth_fusion_beats_single_sample_map_points(walk: Path) -> None:
    """Map points averaged over their observations (fuse_depth, the default) track better than points that
    keep the one noisy depth sample of their keyframe."""
    fused, _, _ = _ate(walk)
    single, _, _ = _ate(walk, fuse_depth=False)
    assert fused < 0.9 * single, (fused, single)
