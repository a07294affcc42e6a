"""Where intrinsics come from, in the documented order: calibration files of every layout in use (COLMAP
cameras.txt and cameras.bin, nerfstudio / instant-ngp transforms.json, 7-Scenes camera-intrinsics.txt, KITTI
calib.txt), also in a scene folder's root, then EXIF focal lengths of JPEGs; readers say which
(`intrinsics_source`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon.calib.camera_info import find_camera_file, load_camera_file
from recon.calib.exif import exif_focal_px
from recon.datasets.folder import ImageFolderSequence
from recon.errors import SequenceError


def test_colmap_cameras_txt_models(tmp_path: Path) -> None:
    path = tmp_path / "cameras.txt"
    path.write_text("# Camera list with one line of data per camera:\n"
                    "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                    "1 OPENCV 640 480 520.5 521.0 320.0 240.5 -0.1 0.01 0.001 -0.002\n")
    assert find_camera_file(tmp_path) == path
    calib = load_camera_file(path)
    assert calib.size == (640, 480)
    # COLMAP puts pixel centres at +0.5; recon (OpenCV) at integers.
    np.testing.assert_allclose(calib.K, [[520.5, 0, 319.5], [0, 521.0, 240.0], [0, 0, 1]])
    np.testing.assert_allclose(calib.distortion, [-0.1, 0.01, 0.001, -0.002])
    path.write_text("2 SIMPLE_RADIAL 518 294 400.0 259.0 147.0 0.02\n")
    calib = load_camera_file(path)
    np.testing.assert_allclose(calib.K, [[400, 0, 258.5], [0, 400, 146.5], [0, 0, 1]])
    np.testing.assert_allclose(calib.distortion, [0.02])
    path.write_text("1 THIN_PRISM_FISHEYE 640 480 1 2 3 4\n")
    with pytest.raises(SequenceError, match="THIN_PRISM_FISHEYE"):
        load_camera_file(path)


def test_colmap_cameras_bin_as_pycolmap_writes_it(tmp_path: Path) -> None:
    """The binary model COLMAP writes by default, written here by COLMAP's own library (model ids and layout)."""
    import pycolmap

    model = tmp_path / "sparse" / "0"
    model.mkdir(parents=True)
    for name, params, K, dist in (
            ("OPENCV", [520.5, 521.0, 320.0, 240.5, -0.1, 0.01, 0.001, -0.002],
             [[520.5, 0, 319.5], [0, 521.0, 240.0], [0, 0, 1]], [-0.1, 0.01, 0.001, -0.002]),
            ("SIMPLE_PINHOLE", [400.0, 259.0, 147.0], [[400, 0, 258.5], [0, 400, 146.5], [0, 0, 1]], [])):
        rec = pycolmap.Reconstruction()
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model=name, width=640, height=480, params=params,
                                                        camera_id=1))
        rec.write(str(model))
        assert find_camera_file(tmp_path) == model / "cameras.bin"
        calib = load_camera_file(model / "cameras.bin")
        assert calib.size == (640, 480)
        np.testing.assert_allclose(calib.K, K)
        np.testing.assert_allclose(calib.distortion, dist)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="FOV", width=640, height=480,
                                                    params=[500, 500, 320, 240, 0.9], camera_id=1))
    rec.write(str(model))
    with pytest.raises(SequenceError, match="model id 7 is not supported"):
        load_camera_file(model / "cameras.bin")
    (model / "cameras.bin").write_bytes((model / "cameras.bin").read_bytes()[:30])
    with pytest.raises(SequenceError, match="cameras.bin"):
        load_camera_file(model / "cameras.bin")


def test_transforms_json_of_nerfstudio_and_instant_ngp(tmp_path: Path) -> None:
    path = tmp_path / "transforms.json"
    # nerfstudio: per-frame intrinsics, corner-origin pixel coordinates.
    path.write_text(json.dumps({"camera_model": "OPENCV", "frames": [
        {"file_path": "images/0.jpg", "fl_x": 500.0, "fl_y": 501.0, "cx": 320.0, "cy": 240.0, "w": 640, "h": 480,
         "k1": 0.05, "k2": -0.01, "p1": 0.0, "p2": 0.001, "transform_matrix": np.eye(4).tolist()}]}))
    assert find_camera_file(tmp_path) == path
    calib = load_camera_file(path)
    assert calib.size == (640, 480) and calib.distortion_model == "plumb_bob"
    np.testing.assert_allclose(calib.K, [[500, 0, 319.5], [0, 501, 239.5], [0, 0, 1]])
    np.testing.assert_allclose(calib.distortion, [0.05, -0.01, 0.0, 0.001])
    # instant-ngp: the horizontal field of view at the top level; cx, cy default to the image centre.
    path.write_text(json.dumps({"camera_angle_x": 2 * math.atan(0.64), "w": 640, "h": 480, "frames": []}))
    calib = load_camera_file(path)
    np.testing.assert_allclose(calib.K, [[500, 0, 319.5], [0, 500, 239.5], [0, 0, 1]])
    path.write_text(json.dumps({"camera_model": "EQUIRECTANGULAR", "fl_x": 1, "w": 2, "h": 1}))
    with pytest.raises(SequenceError, match="not a pinhole camera"):
        load_camera_file(path)
    path.write_text(json.dumps({"frames": [{"file_path": "a.jpg"}]}))
    with pytest.raises(SequenceError, match="transforms.json intrinsics"):
        load_camera_file(path)


def test_scene_folder_reads_images_with_the_root_calibration(tmp_path: Path) -> None:
    """`<scene>/images/` with the calibration beside it (COLMAP's sparse/0/, nerfstudio's transforms.json), or none
    at all (the LingBot-Map scenes in ../shared/data): the image subfolder is read, the root's file is used."""
    from recon.datasets import detect_layout, open_sequence

    for i in range(3):
        _jpeg(tmp_path / "images" / f"{i:03d}.jpg", (400, 300), {})
        _jpeg(tmp_path / "images_2" / f"{i:03d}.jpg", (200, 150), {})
    assert detect_layout(tmp_path) == "folder"
    seq = open_sequence(tmp_path)
    assert len(list(seq)) == 3 and seq.camera_info is None and seq.name == tmp_path.name
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 350, "fl_y": 351, "cx": 200, "cy": 150,
                                                          "w": 400, "h": 300, "frames": []}))
    seq = open_sequence(tmp_path)
    assert seq.intrinsics_source == "calibration file transforms.json" and seq.camera_info.K[0, 0] == 350
    assert next(iter(seq)).image.shape == (300, 400, 3)  # images/, not the half-size images_2/
    # A calibration file in the image folder itself comes first.
    (tmp_path / "images" / "cameras.txt").write_text("1 PINHOLE 400 300 360 361 200.5 150.5\n")
    assert open_sequence(tmp_path).camera_info.K[0, 0] == 360


def test_seven_scenes_and_kitti_files_are_found(tmp_path: Path) -> None:
    seven = tmp_path / "seven"
    seven.mkdir()
    (seven / "camera-intrinsics.txt").write_text("585 0 320\n0 585 240\n0 0 1\n")
    assert find_camera_file(seven).name == "camera-intrinsics.txt"
    np.testing.assert_allclose(load_camera_file(find_camera_file(seven)).K, [[585, 0, 320], [0, 585, 240], [0, 0, 1]])
    kitti = tmp_path / "kitti"
    kitti.mkdir()
    P0 = "718.856 0 607.1928 0 0 718.856 185.2157 0 0 0 1 0"
    P2 = "718.856 0 607.1928 45.38225 0 718.856 185.2157 -0.1130887 0 0 1 0.003779761"
    (kitti / "calib.txt").write_text(f"P0: {P0}\nP1: {P0}\nP2: {P2}\nP3: {P2}\nTr: {P0}\n")
    np.testing.assert_allclose(load_camera_file(find_camera_file(kitti)).K,
                               [[718.856, 0, 607.1928], [0, 718.856, 185.2157], [0, 0, 1]])


def _jpeg(path: Path, size: tuple[int, int], tags: dict[int, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd.update(tags)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, exif=exif)


def test_exif_focal_35mm_and_sensor_pitch(tmp_path: Path) -> None:
    size = (400, 300)
    _jpeg(tmp_path / "a.jpg", size, {0xA405: 28})
    f, how = exif_focal_px(tmp_path / "a.jpg", size)
    # 35 mm equivalent is defined on the diagonal (43.27 mm): 28 mm over a 500 px diagonal.
    assert f == pytest.approx(28 * 500 / math.hypot(36, 24)) and "35mm" in how
    # Focal length 4.2 mm, 1000 px per cm on the sensor, image written 4000 px wide and resized to 400.
    _jpeg(tmp_path / "b.jpg", size, {0x920A: 4.2, 0xA20E: 1000.0, 0xA210: 3, 0xA002: 4000, 0xA405: 28})
    f, how = exif_focal_px(tmp_path / "b.jpg", size)
    assert f == pytest.approx(4.2 * 100 * 0.1) and "FocalLength" in how
    _jpeg(tmp_path / "c.jpg", size, {})
    assert exif_focal_px(tmp_path / "c.jpg", size) is None


def test_folder_reader_order_file_then_exif(tmp_path: Path) -> None:
    for i in range(2):
        _jpeg(tmp_path / f"{i:03d}.jpg", (400, 300), {0xA405: 28})
    seq = ImageFolderSequence(tmp_path)
    assert seq.camera_info is not None and "EXIF" in seq.intrinsics_source
    assert seq.camera_info.K[0, 0] == pytest.approx(28 * 500 / math.hypot(36, 24))
    assert next(iter(seq)).K is not None
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 400 300 350 351 200.5 150.5\n")
    seq = ImageFolderSequence(tmp_path)
    assert seq.intrinsics_source == "calibration file cameras.txt" and seq.camera_info.K[0, 0] == 350


def test_summary_names_the_intrinsics_source() -> None:
    """summary.json's `extra.intrinsics`: the backend's value, with the reader's source when the frames had K."""
    from types import SimpleNamespace

    from recon.commands.replay import _intrinsics
    from recon.types import CameraInfo

    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    seq = SimpleNamespace(camera_info=CameraInfo(640, 480, K), intrinsics_source="--camera-info")
    given = {"intrinsics": {"fx": 500.0, "fy": 500.0, "cx": 319.5, "cy": 239.5, "source": "given"}}
    assert _intrinsics(seq, given)["source"] == "--camera-info"
    calibrated = {"intrinsics": {"fx": 401.0, "fy": 401.0, "cx": 319.5, "cy": 239.5,
                                 "source": "self-calibrated (bundle adjustment)"}}
    unknown = SimpleNamespace(camera_info=None, intrinsics_source=None)
    assert _intrinsics(unknown, calibrated) == calibrated["intrinsics"]
    assert _intrinsics(seq, {})["fx"] == 500.0 and _intrinsics(unknown, {}) is None
