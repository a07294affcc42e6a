"""Exports: a replay of the bundled sample writes all five formats, and each is read back by its own ecosystem's
library (pycolmap, nerfstudio's transforms.json schema, Open3D, the mcap reader, numpy/cv2); `recon export` rebuilds
them from the run's frames record; pose updates win and untracked frames are left out."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from recon.cli import main
from recon.export import FORMATS, create_export_sinks, export_run, parse_export_formats
from recon.export.frames import read_frames
from recon.export.nerfstudio import NERFSTUDIO_SCHEMA
from recon.geometry.transforms import OPENCV_TO_OPENGL
from recon.io.trajectory import read_tum_trajectory
from recon.sinks import SinkGroup
from recon.types import FrameResult

pytestmark = pytest.mark.timeout(300)

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "sample"
FRAMES = 12


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "run"
    assert main(["replay", str(SAMPLE), "--max-frames", str(FRAMES), "--out", str(out), "--viewer", "none",
                 "--no-progress", "--export", "colmap,nerfstudio,mesh,frames,mcap"]) == 0
    return out


def _poses(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return read_tum_trajectory(run_dir / "trajectory.tum")


def test_summary_lists_every_export(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    for fmt in FORMATS:
        assert Path(summary["outputs"][f"export_{fmt}"]).exists(), fmt


def test_frames_read_with_numpy_and_cv2(run_dir: Path) -> None:
    _, T = _poses(run_dir)
    folder = run_dir / "frames"
    lines = [json.loads(x) for x in (folder / "frames.jsonl").read_text().splitlines()]
    assert len(lines) == FRAMES and all(e["tracked"] and e["metric"] for e in lines)
    for e, T_i in zip(lines, T, strict=True):
        depth_mm = cv2.imread(str(folder / e["depth"]), cv2.IMREAD_UNCHANGED)
        rgb = cv2.imread(str(folder / e["rgb"]))
        assert depth_mm.dtype == np.uint16 and depth_mm.shape == (e["height"], e["width"])
        assert rgb.shape == (e["height"], e["width"], 3)
        # The sample's depth is 1-6 m: millimetres, not metres or 5000ths.
        assert 500 < np.median(depth_mm[depth_mm > 0]) < 7000
        cam = json.loads((folder / "cameras" / "sample" / f"{e['seq']:06d}.json").read_text())
        np.testing.assert_allclose(cam["T_world_cam"], T_i, atol=1e-6)
        np.testing.assert_allclose(cam["K"], e["K"])
        assert np.load(folder / e["confidence"]).shape == depth_mm.shape


def test_colmap_model_reads_back_in_pycolmap(run_dir: Path) -> None:
    import pycolmap

    _, T = _poses(run_dir)
    rec = pycolmap.Reconstruction(str(run_dir / "colmap" / "sparse" / "0"))
    assert rec.num_reg_images() == FRAMES and rec.num_cameras() == 1 and rec.num_points3D() > 1000
    frames = read_frames(run_dir)
    for record, T_i in zip(frames, T, strict=True):
        image = rec.find_image_with_name(f"{record.seq:06d}.jpg")
        assert image is not None and (run_dir / "colmap" / "images" / image.name).is_file()
        # COLMAP stores cam_from_world; its projection centre is our camera centre.
        np.testing.assert_allclose(image.projection_center(), T_i[:3, 3], atol=1e-6)
        cam = rec.camera(image.camera_id)
        K = np.asarray(record.entry["K"])
        assert cam.model_name == "PINHOLE" and (cam.width, cam.height) == (record.entry["width"],
                                                                          record.entry["height"])
        np.testing.assert_allclose(cam.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5])  # corner origin
    # A map point projects into the first image at a pixel whose depth agrees with it (poses and K consistent).
    first = frames[0].result()
    image = rec.find_image_with_name("000000.jpg")
    cam = rec.camera(image.camera_id)
    hits = 0
    for p in list(rec.points3D.values())[::50]:
        p_cam = image.cam_from_world() * p.xyz
        if p_cam[2] <= 0:
            continue
        u, v = cam.img_from_cam(p_cam)
        col, row = int(u), int(v)  # corner-origin pixel coordinates: floor gives the pixel index
        if 0 <= row < first.depth.shape[0] and 0 <= col < first.depth.shape[1] and first.depth[row, col] > 0:
            hits += abs(first.depth[row, col] - p_cam[2]) < 0.1
    assert hits > 10


def test_nerfstudio_transforms_match_the_schema_and_opengl_convention(run_dir: Path) -> None:
    import jsonschema

    root = run_dir / "nerfstudio"
    data = json.loads((root / "transforms.json").read_text())
    jsonschema.validate(data, NERFSTUDIO_SCHEMA)
    _, T = _poses(run_dir)
    assert len(data["frames"]) == FRAMES and (root / data["ply_file_path"]).is_file()
    for frame, T_i in zip(data["frames"], T, strict=True):
        c2w = np.asarray(frame["transform_matrix"])
        np.testing.assert_allclose(c2w[:3, 3], T_i[:3, 3], atol=1e-6)
        # OpenGL camera: it looks down its -z axis, which is our optical axis (+z of the OpenCV camera).
        np.testing.assert_allclose(-c2w[:3, 2], T_i[:3, 2], atol=1e-6)
        np.testing.assert_allclose(c2w[:3, 1], -T_i[:3, 1], atol=1e-6)
        assert (root / frame["file_path"]).is_file() and (root / frame["depth_file_path"]).is_file()
        assert frame["w"] > 0 and frame["fl_x"] > 0
    np.testing.assert_array_equal(OPENCV_TO_OPENGL @ OPENCV_TO_OPENGL, np.eye(4))


def test_mesh_reads_back_in_open3d(run_dir: Path) -> None:
    import open3d as o3d

    for name in ("mesh.ply", "mesh.glb"):
        mesh = o3d.io.read_triangle_mesh(str(run_dir / "mesh" / name))
        assert len(mesh.triangles) > 1000, name
    mesh = o3d.io.read_triangle_mesh(str(run_dir / "mesh" / "mesh.ply"))
    assert mesh.has_vertex_colors()
    # The room's surfaces lie where the depth maps put them: mesh vertices are close to the PLY point cloud.
    cloud = o3d.io.read_point_cloud(str(run_dir / "points.ply"))
    dist = np.asarray(o3d.geometry.PointCloud(mesh.vertices).compute_point_cloud_distance(cloud))
    assert np.median(dist) < 0.1  # a few TSDF voxels (voxel 1 % of the ~4 m median depth)
    assert not (run_dir / "mesh" / ".spool").exists()


def test_mcap_reads_back_with_foxglove_schemas(run_dir: Path) -> None:
    from mcap.reader import make_reader
    from mcap_protobuf.decoder import DecoderFactory

    _, T = _poses(run_dir)
    topics: dict[str, list] = {}
    with (run_dir / "recording.mcap").open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        schemas = {s.name for s in reader.get_summary().schemas.values()}
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            topics.setdefault(channel.topic, []).append((schema.name, message.log_time, decoded))
    assert {"foxglove.PoseInFrame", "foxglove.FrameTransforms", "foxglove.PointCloud", "foxglove.CompressedImage",
            "foxglove.CameraCalibration", "foxglove.RawImage", "foxglove.PosesInFrame"} <= schemas
    poses = topics["/recon/sample/pose"]
    assert len(poses) == FRAMES
    for (_, _, pose), T_i in zip(poses, T, strict=True):
        p = pose.pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], T_i[:3, 3], atol=1e-6)
    _, _, cloud = topics["/recon/sample/points"][0]
    pts = np.frombuffer(cloud.data, dtype=[("xyz", "<f4", 3), ("rgba", "u1", 4)])
    assert cloud.point_stride == 16 and len(pts) > 100 and np.isfinite(pts["xyz"]).all()
    _, _, image = topics["/recon/sample/image"][0]
    assert cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR) is not None
    _, _, calib = topics["/recon/sample/calibration"][0]
    assert calib.K[0] > 0 and calib.width > 0
    _, _, tf = topics["/tf"][0]
    assert tf.transforms[0].parent_frame_id == "world" and tf.transforms[0].child_frame_id == "sample/camera"
    (_, _, path), = topics["/recon/sample/path"]
    assert len(path.poses) == FRAMES


def test_recon_export_rebuilds_every_format_from_the_record(run_dir: Path, tmp_path: Path) -> None:
    import pycolmap

    out = tmp_path / "again"
    assert main(["export", str(run_dir), "--format", "all", "--out", str(out)]) == 0
    a = pycolmap.Reconstruction(str(run_dir / "colmap" / "sparse" / "0"))
    b = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    for image in a.images.values():
        other = b.find_image_with_name(image.name)
        np.testing.assert_allclose(other.projection_center(), image.projection_center(), atol=1e-9)
    assert json.loads((out / "nerfstudio" / "transforms.json").read_text())["frames"]
    assert (out / "mesh" / "mesh.ply").is_file() and (out / "recording.mcap").stat().st_size > 0
    assert len(read_frames(out)) == FRAMES
    assert main(["export", str(tmp_path / "nope"), "--format", "colmap"]) == 1
    assert main(["export", str(run_dir), "--format", "obj"]) == 1


def _result(seq: int, x: float, *, update: bool = False, tracked: bool = True) -> FrameResult:
    T = np.eye(4)
    T[0, 3] = x
    depth = np.full((8, 10), 2.0, np.float32)
    K = np.array([[10.0, 0, 5], [0, 10.0, 4], [0, 0, 1]])
    return FrameResult("cam", seq, 1_000_000_000 + seq * 33_000_000, T, K, depth=depth, metric=True,
                       image=np.full((8, 10, 3), 100, np.uint8), is_update=update, tracked=tracked)


def test_updates_win_and_untracked_frames_are_left_out(tmp_path: Path) -> None:
    import pycolmap

    sinks = create_export_sinks("all", tmp_path)
    group = SinkGroup(sinks)
    for r in (_result(0, 0.0), _result(1, 0.1), _result(2, 9.9, tracked=False), _result(3, 0.3),
              _result(1, 0.15, update=True), _result(3, 0.0, update=True, tracked=False)):
        group.on_result(r)
    group.close()
    # Frame 1's revised pose everywhere; frame 2 (never tracked) and frame 3 (lost by an update) nowhere.
    rec = pycolmap.Reconstruction(str(tmp_path / "colmap" / "sparse" / "0"))
    centres = {im.name: im.projection_center()[0] for im in rec.images.values()}
    assert centres == pytest.approx({"000000.jpg": 0.0, "000001.jpg": 0.15})
    frames = json.loads((tmp_path / "nerfstudio" / "transforms.json").read_text())["frames"]
    assert [f["transform_matrix"][0][3] for f in frames] == pytest.approx([0.0, 0.15])
    assert [(r.seq, r.entry["T_world_cam"][0][3]) for r in read_frames(tmp_path)] == [(0, 0.0), (1, 0.15)]
    assert sorted(p.name for p in (tmp_path / "frames" / "cameras" / "cam").iterdir()) == ["000000.json",
                                                                                           "000001.json"]
    # The frames record can rebuild the same state.
    again = export_run(tmp_path, "colmap", tmp_path / "again")
    rec2 = pycolmap.Reconstruction(str(Path(again["colmap"]) / "sparse" / "0"))
    assert rec2.num_images() == 2


def test_export_format_parsing() -> None:
    assert parse_export_formats("mesh,colmap") == ["colmap", "mesh"]
    assert parse_export_formats("none") == [] and parse_export_formats("all") == list(FORMATS)
    with pytest.raises(ValueError, match="choose from frames, colmap"):
        parse_export_formats("ply")


@pytest.mark.parametrize("fmt", ["colmap", "nerfstudio"])
def test_an_export_replays_as_a_sequence(run_dir: Path, fmt: str) -> None:
    """`recon replay runs/X/colmap` (or nerfstudio) reads the export back: COLMAP's images/ with cameras.bin as
    pycolmap wrote it; nerfstudio's transforms.json with its depth, and its poses and times as the ground truth,
    so a run hands over to other tools and back without a calibration file of ours."""
    from recon.datasets import detect_layout, open_sequence

    scene = run_dir / fmt
    assert detect_layout(scene) == {"colmap": "folder", "nerfstudio": "nerfstudio"}[fmt]
    seq = open_sequence(scene)
    frames = list(seq)
    records = read_frames(run_dir)
    assert len(frames) == FRAMES
    K = np.asarray(records[0].entry["K"])
    np.testing.assert_allclose(seq.camera_info.K, K, atol=1e-6)
    assert (seq.camera_info.width, seq.camera_info.height) == (records[0].entry["width"], records[0].entry["height"])
    assert frames[0].image.shape == (records[0].entry["height"], records[0].entry["width"], 3)
    if fmt == "nerfstudio":
        t_ns, T = _poses(run_dir)
        assert seq.has_depth and seq.ground_truth is not None
        np.testing.assert_array_equal(seq.ground_truth.t_ns, t_ns)
        np.testing.assert_allclose(seq.ground_truth.T_world_cam, T, atol=1e-6)  # OpenGL axes turned back
        for frame, record in zip(frames, records, strict=True):
            depth_mm = cv2.imread(str(run_dir / "frames" / record.entry["depth"]), cv2.IMREAD_UNCHANGED)
            np.testing.assert_allclose(frame.depth, depth_mm / 1000.0, atol=1e-6)
