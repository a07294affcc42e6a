"""Loop closure on degraded synthetic footage: `recon synth --realistic --trajectory loop` (Kinect depth noise,
quantisation and holes, motion blur, exposure and white-balance drift, sensor noise, JPEG), seeds 0..2.

The lap is rendered at the speed that brings the camera back to its first pose at frame `LAP` and goes on for
`EXTRA` frames, so the end of the lap sees the start again. The backend under the map layer is
`OraclePointMaps` over the *degraded* depth in arbitrary units (the shape of a learned backend's output: point
maps up to scale) with `DriftingBackend`'s per-frame odometry error (yaw, climb, scale), so the open loop fails
the goals and the map layer must close it through degraded images (place recognition, ORB verification) and
noisy, holed 3-D. Thresholds: issue 13's goals for `lingbot_loop`: return error and vertical drift below 2 % of
the path after closure.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from recon.datasets import open_sequence
from recon.map import MappedBackend, OdometryRecorder, loop_figures
from recon.types import Frame
from tests.recon.map._loop import DriftingBackend, OraclePointMaps

pytestmark = pytest.mark.timeout(600)
LAP, EXTRA = 80, 10
GOAL = 0.02  # issue 13: 2 % of the path


def _render(folder: Path, seed: int) -> Path:
    from recon.datasets.degrade import Degradations
    from recon.datasets.synthetic import LOOP_SECONDS, generate_sequence

    speed = LOOP_SECONDS * 30.0 / LAP  # back at the first pose at frame LAP (30 frames/s)
    return generate_sequence(folder, seed=seed, trajectory="loop", num_frames=LAP + EXTRA, width=160, height=120,
                             supersample=1, degradations=Degradations.realistic(speed=speed))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_up_to_scale_point_maps_close_a_degraded_loop(tmp_path: Path, seed: int) -> None:
    sequence = open_sequence(_render(tmp_path / f"loop{seed}", seed))
    frames = [Frame(f.stream_id, f.seq, f.t_ns, f.image, K=f.K, depth=f.depth) for f in sequence]
    gt = sequence.ground_truth.T_world_cam
    assert np.linalg.norm(gt[LAP, :3, 3] - gt[0, :3, 3]) < 1e-6  # the lap really closes at frame LAP

    tap = OdometryRecorder(DriftingBackend(OraclePointMaps(gt), yaw=math.radians(0.3), climb=0.004, scale=0.004))
    mapped = MappedBackend(tap)
    final: dict[int, np.ndarray] = {}
    for f in frames:
        final.update({r.seq: r.T_world_cam for r in mapped.step(f)})
    final.update({r.seq: r.T_world_cam for r in mapped.flush()})

    def figures(poses: dict[int, np.ndarray]) -> dict[str, float]:
        return loop_figures(np.stack([poses[s] for s in range(LAP + 1)]))

    before, after = figures(tap.poses), figures(final)
    assert before["return_error"] > 2 * GOAL and before["vertical_drift"] > GOAL, before  # open loop fails
    assert mapped.stats().extra["map_mode"] == "sim3"
    assert len(mapped.loops) >= 1 and mapped.optimisations >= 1
    assert after["return_error"] < GOAL, (before, after)
    assert after["vertical_drift"] < GOAL, (before, after)
