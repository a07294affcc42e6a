"""The sinks apply the map layer's corrections: pose-only revisions (`is_update`, no points) move what a sink
already holds of that frame; revisions with points replace it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from recon.geometry import make_se3, so3_exp
from recon.sinks.points import PointCloudWriter
from recon.types import FrameResult

K = np.array([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])


def _result(seq: int, T: np.ndarray, depth: float = 2.0, is_update: bool = False, points: bool = True
            ) -> FrameResult:
    from recon.geometry import depth_to_world_points

    d = np.full((12, 16), depth, np.float32)
    pts = depth_to_world_points(d, K, T).astype(np.float32) if points else None
    img = np.full((12, 16, 3), 40 * (seq + 1), np.uint8)
    return FrameResult("cam", seq, seq, T, K, depth=d if points else None, points_world=pts, metric=True,
                       image=img if points else None, is_update=is_update)


def _read(path: Path) -> np.ndarray:
    return np.asarray(o3d.io.read_point_cloud(str(path)).points)


def test_a_pose_only_revision_moves_the_frames_points(tmp_path: Path) -> None:
    writer = PointCloudWriter(tmp_path / "a.ply", voxel_size=0.05)
    writer.on_result(_result(0, np.eye(4)))
    writer.on_result(_result(1, make_se3(np.eye(3), np.array([0.0, 0.0, 10.0]))))
    moved = make_se3(so3_exp(np.array([0.0, 0.3, 0.0])), np.array([5.0, 0.0, 10.0]))
    writer.on_result(_result(1, moved, is_update=True, points=False))
    writer.close()
    pts = _read(tmp_path / "a.ply")
    # frame 0's plane at z = 2; frame 1's plane re-placed 2 m in front of its corrected pose
    near = pts[pts[:, 2] < 5]
    far = pts[pts[:, 2] >= 5]
    assert np.allclose(near[:, 2], 2.0, atol=0.03)
    expected_centre = moved[:3, :3] @ np.array([0.0, 0.0, 2.0]) + moved[:3, 3]
    assert np.linalg.norm(far.mean(0) - expected_centre) < 0.2
    assert writer.summary()["revisions_applied"] == 1


def test_a_revision_with_points_replaces_them_and_a_folded_frame_is_counted(tmp_path: Path) -> None:
    writer = PointCloudWriter(tmp_path / "b.ply", voxel_size=0.05, revisable_points=1)
    writer.on_result(_result(0, np.eye(4)))
    writer.on_result(_result(1, np.eye(4), depth=4.0))  # frame 0 is folded: more than 1 point held
    writer.on_result(_result(0, np.eye(4), depth=3.0, is_update=True))  # too late for frame 0
    writer.on_result(_result(1, np.eye(4), depth=6.0, is_update=True))  # frame 1 is still held: replaced
    writer.close()
    z = np.unique(np.round(_read(tmp_path / "b.ply")[:, 2], 1))
    assert set(z.tolist()) == {2.0, 6.0}
    assert writer.summary()["revisions_too_late"] == 1 and writer.summary()["revisions_applied"] == 1


def test_the_rerun_path_and_map_follow_a_pose_only_revision(tmp_path: Path) -> None:
    import rerun.chunk as rr_chunk

    from recon.viewer import create_rerun_sink
    from tests.viewer.test_rerun_logger import make_result

    path = tmp_path / "rec.rrd"
    sink = create_rerun_sink(f"rrd:{path}", stream_ids=["cam"], map_every=2, trajectory_block=10)
    for seq in range(4):
        sink.on_result(make_result("cam", seq))
    moved = make_result("cam", 3)
    T = moved.T_world_cam.copy()
    T[0, 3] += 5.0
    sink.on_result(FrameResult("cam", 3, moved.t_ns, T, moved.K, metric=True, is_update=True))
    sink.close()

    def last(entity: str, column: str) -> list:
        rows = [c.to_record_batch().column(column).to_pylist() for c in rr_chunk.RrdReader(path).stream()
                if c.entity_path == entity]
        return [row for batch in rows for row in batch if row is not None][-1]

    strip = last("/world/cam/trajectory/0", "LineStrips3D:strips")[0]
    assert [p[0] for p in strip] == pytest.approx([0.0, 0.1, 0.2, 5.3])
    xyz = np.array(last("/world/cam/map", "Points3D:positions"))
    assert (xyz[:, 0] > 4.0).any()  # frame 3's points moved with it, 5 m along x
    assert (xyz[:, 0] < 2.0).any()  # the other frames' points stayed


def test_the_exports_map_points_follow_a_pose_only_revision() -> None:
    from recon.export.common import MapPoints

    first, revised = MapPoints(voxel_size=0.05), MapPoints(voxel_size=0.05)
    for points in (first, revised):
        points.add(_result(0, np.eye(4)))
        points.add(_result(1, make_se3(np.eye(3), np.array([0.0, 0.0, 10.0]))))
    revised.add(_result(1, make_se3(np.eye(3), np.array([7.0, 0.0, 10.0])), is_update=True, points=False))
    (a, _), (b, _) = first.points("cam"), revised.points("cam")
    far_a, far_b = a[a[:, 2] > 5], b[b[:, 2] > 5]
    assert np.allclose(far_b[:, 2], 12.0, atol=0.03)
    assert far_b[:, 0].mean() - far_a[:, 0].mean() == pytest.approx(7.0, abs=0.03)  # voxel rounding
    np.testing.assert_allclose(np.sort(b[b[:, 2] < 5], axis=0), np.sort(a[a[:, 2] < 5], axis=0))
