"""A stream whose world frame changes (here: its resolution, which resets the session) continues in a new output
segment: a new trajectory file, and in the Rerun recording a cleared subtree; every result's capture-to-publish
latency is in the recording as a scalar time series of its stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recon.io.trajectory import read_tum_trajectory
from recon.nodes.pipeline import run_pipeline
from recon.sinks import SegmentedSink, TrajectoryWriter, segment_path
from recon.types import Frame
from recon.viewer import create_rerun_sink
from tests.viewer.test_rerun_logger import read_rrd

pytestmark = pytest.mark.timeout(60)


class TwoSizes:
    """A recorded source whose frames change size at seq 6 (a camera reconfigured mid-stream)."""

    live = False
    camera_info = None
    drops = 0
    name = "cam"

    def __iter__(self) -> Iterator[Frame]:
        for i in range(12):
            h, w = (24, 32) if i < 6 else (48, 64)
            yield Frame("cam", i, 1_000_000 * (i + 1), np.full((h, w, 3), 10 * i, np.uint8))

    def close(self) -> None:
        pass


def test_a_new_world_frame_starts_a_new_segment_everywhere(tmp_path: Path) -> None:
    rrd = tmp_path / "rec.rrd"
    trajectories = SegmentedSink(lambda k: TrajectoryWriter(segment_path(tmp_path / "trajectory.tum", k)))
    rerun = create_rerun_sink(f"rrd:{rrd}")
    stats = run_pipeline(TwoSizes(), "identity", [trajectories, rerun], mode="inproc",
                         backend_options={"points": True})
    assert stats.viewer.segments == {"cam": 1} and stats.viewer.resets == 1 and stats.results_lost == 0
    t0, T0 = read_tum_trajectory(tmp_path / "trajectory.tum")
    t1, T1 = read_tum_trajectory(tmp_path / "trajectory.seg1.tum")
    np.testing.assert_allclose(T0[:, 0, 3], 0.01 * np.arange(6))  # identity backend: x = seq cm
    np.testing.assert_allclose(T1[:, 0, 3], 0.01 * np.arange(6, 12))
    seqs, cols, _, _ = read_rrd(rrd)
    latency = "/stats/cam/publish_latency_ms"
    assert seqs[latency] == set(range(12)), "one latency sample per result, on the seq timeline"
    assert any("Scalars" in c or "scalars" in c for c in cols[latency])
    cleared = [e for e, c in cols.items() if e == "/world/cam" and any("Clear" in x or "clear" in x for x in c)]
    assert cleared, f"the stream's subtree is cleared at the new segment: {sorted(cols)}"
    assert seqs["/world/cam"] == {6}, "cleared at the time of the new world's first frame"
