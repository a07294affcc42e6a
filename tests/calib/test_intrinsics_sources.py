"""Where intrinsics come from, in the documented order: calibration files of every layout in use (COLMAP
cameras.txt, 7-Scenes camera-intrinsics.txt, KITTI calib.txt), then EXIF focal lengths of JPEGs; readers say
which (`intrinsics_source`)."""

from __future__ import annotations

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
