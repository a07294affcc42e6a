"""recon.calib: every calibration format reads back to the same CameraInfo; undistortion maps distorted
projections onto the pinhole ones; the camera node sends undistorted frames with the pinhole K."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from recon.calib import (
    Undistorter,
    has_distortion,
    load_camera_file,
    load_camera_info,
    write_camera_info,
    write_camera_info_yaml,
)
from recon.errors import ConfigError, SequenceError
from recon.types import BackendStats, CameraInfo, Frame

K = np.array([[300.0, 0.0, 161.5], [0.0, 305.0, 118.0], [0.0, 0.0, 1.0]])
DIST = np.array([-0.28, 0.09, 0.001, -0.0005, -0.012])
INFO = CameraInfo(320, 240, K, DIST, "front")


def test_ros_yaml_round_trip(tmp_path: Path) -> None:
    write_camera_info_yaml(tmp_path / "cam.yaml", INFO)
    info = load_camera_info(tmp_path / "cam.yaml")
    assert (info.width, info.height, info.frame_id) == (320, 240, "front")
    np.testing.assert_allclose(info.K, K)
    np.testing.assert_allclose(info.distortion, DIST)


def test_opencv_filestorage_yaml_and_xml(tmp_path: Path) -> None:
    for name in ("cam.yml", "cam.xml"):
        fs = cv2.FileStorage(str(tmp_path / name), cv2.FILE_STORAGE_WRITE)
        fs.write("image_width", 320)
        fs.write("image_height", 240)
        fs.write("camera_matrix", K)
        fs.write("distortion_coefficients", DIST.reshape(1, -1))
        fs.release()
        info = load_camera_info(tmp_path / name)
        assert (info.width, info.height) == (320, 240)
        np.testing.assert_allclose(info.K, K)
        np.testing.assert_allclose(info.distortion, DIST)


def test_json_and_text(tmp_path: Path) -> None:
    (tmp_path / "camera.json").write_text(json.dumps({"K": K.tolist(), "width": 320, "height": 240,
                                                      "distortion": DIST.tolist(), "depth_scale": 5000}))
    calib = load_camera_file(tmp_path / "camera.json")
    assert calib.depth_scale == 5000 and calib.size == (320, 240)
    (tmp_path / "intrinsics.txt").write_text("300 305 161.5 118 320 240\n")
    np.testing.assert_allclose(load_camera_info(tmp_path / "intrinsics.txt").K, K)


def test_malformed_files_name_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("image_width: 320\n")
    with pytest.raises(SequenceError, match="camera_matrix"):
        load_camera_info(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("camera_matrix: {data: [1, 2]}\nimage_width: 3\nimage_height: 2\n")
    with pytest.raises(SequenceError, match="b.yaml"):
        load_camera_info(tmp_path / "b.yaml")
    (tmp_path / "c.json").write_text(json.dumps({"K": K.tolist()}))
    with pytest.raises(SequenceError, match="width and height"):
        load_camera_info(tmp_path / "c.json")
    with pytest.raises(SequenceError, match="not a file"):
        load_camera_info(tmp_path / "missing.yaml")


def test_undistortion_puts_distorted_points_on_the_pinhole_projection() -> None:
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-0.5, 0.5, 60), rng.uniform(-0.35, 0.35, 60), np.ones(60)])
    distorted, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, DIST)
    pinhole, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, None)
    distorted, pinhole = distorted.reshape(-1, 2), pinhole.reshape(-1, 2)
    # Draw a dot at each distorted projection, undistort the image, find the dots again.
    und = Undistorter(INFO)
    errors = []
    for d, p in zip(distorted, pinhole, strict=True):
        if not (4 <= p[0] < 316 and 4 <= p[1] < 236):
            continue
        img = np.zeros((240, 320, 3), np.uint8)
        cv2.circle(img, (int(round(d[0] * 16)), int(round(d[1] * 16))), 2 * 16, (255, 255, 255), -1, cv2.LINE_AA,
                   shift=4)
        out = und.image(img)[..., 0].astype(np.float64)
        ys, xs = np.nonzero(out > 0)
        w = out[ys, xs]
        errors.append(np.hypot((xs * w).sum() / w.sum() - p[0], (ys * w).sum() / w.sum() - p[1]))
    assert len(errors) > 30
    assert np.median(errors) < 0.3 and max(errors) < 0.8, (np.median(errors), max(errors))
    np.testing.assert_allclose(und.camera_info.K, K)
    assert not has_distortion(und.camera_info)


def test_zero_distortion_is_not_undistorted() -> None:
    assert not has_distortion(CameraInfo(320, 240, K, np.zeros(5)))
    assert not has_distortion(None)
    assert has_distortion(INFO)


def test_camera_node_sends_undistorted_frames() -> None:
    from recon.nodes.camera_node import CameraNode, CameraNodeConfig
    from recon.nodes.protocol import decode, to_frame

    image = np.zeros((240, 320, 3), np.uint8)
    cv2.rectangle(image, (40, 30), (280, 210), (255, 255, 255), 3)

    class OneFrame:
        live = False
        name = "one"
        camera_info = INFO

    expected = Undistorter(INFO).image(image)
    for undistort, want in ((True, expected), (False, image)):
        node = CameraNode(OneFrame(), CameraNodeConfig(undistort=undistort, encoding="raw"))
        parts = node._encode(Frame("one", 0, 0, image.copy()))
        frame = to_frame(decode(parts))
        np.testing.assert_array_equal(frame.image, want)
        np.testing.assert_allclose(frame.K, K)


ROS_YAML = """\
image_width: 640
image_height: 480
camera_name: narrow_stereo/left
camera_matrix:
  rows: 3
  cols: 3
  data: [415.2, 0.0, 322.1, 0.0, 414.8, 241.7, 0.0, 0.0, 1.0]
distortion_model: rational_polynomial
distortion_coefficients:
  rows: 1
  cols: 8
  data: [0.11, -0.05, 0.0012, -0.0008, 0.003, 0.002, 0.001, -0.0004]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
projection_matrix:
  rows: 3
  cols: 4
  data: [410.0, 0.0, 321.0, 0.0, 0.0, 411.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
"""


def test_real_world_ros_camera_info_layout(tmp_path: Path) -> None:
    (tmp_path / "left.yaml").write_text(ROS_YAML)
    calib = load_camera_file(tmp_path / "left.yaml")
    assert calib.distortion_model == "rational_polynomial" and calib.size == (640, 480)
    info = load_camera_info(tmp_path / "left.yaml")
    assert info.frame_id == "narrow_stereo/left" and info.distortion.size == 8
    np.testing.assert_allclose(info.K, [[415.2, 0, 322.1], [0, 414.8, 241.7], [0, 0, 1]])


@pytest.mark.parametrize("name,fmt", [("a.yaml", None), ("b.json", None), ("c.xml", None), ("d.yml", "opencv"),
                                      ("e.yaml", "opencv")])
def test_write_camera_info_round_trips_every_format(tmp_path: Path, name: str, fmt: str | None) -> None:
    write_camera_info(tmp_path / name, INFO, fmt, distortion_model="rational_polynomial")
    calib = load_camera_file(tmp_path / name)
    info = load_camera_info(tmp_path / name)
    assert (info.width, info.height) == (320, 240) and calib.distortion_model == "rational_polynomial"
    np.testing.assert_allclose(info.K, K)
    np.testing.assert_allclose(info.distortion, DIST)


def test_recon_synth_camera_json_stays_readable(tmp_path: Path) -> None:
    # What recon.datasets.synthetic writes as camera.json (no distortion key) reads as a distortion-free camera.
    (tmp_path / "camera.json").write_text(json.dumps({"width": 64, "height": 48, "K": K.tolist()}))
    info = load_camera_info(tmp_path / "camera.json")
    assert info.distortion.size == 0 and (info.width, info.height) == (64, 48)


def test_malformed_opencv_and_unknown_format(tmp_path: Path) -> None:
    fs = cv2.FileStorage(str(tmp_path / "no_k.xml"), cv2.FILE_STORAGE_WRITE)
    fs.write("image_width", 320)
    fs.release()
    with pytest.raises(SequenceError, match=r"no_k\.xml.*camera_matrix"):
        load_camera_info(tmp_path / "no_k.xml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(SequenceError, match="bad.yaml"):
        load_camera_info(tmp_path / "bad.yaml")
    with pytest.raises(SequenceError, match="unknown calibration format"):
        write_camera_info(tmp_path / "x.cfg", INFO)


def _dot_errors(und: Undistorter, distorted: np.ndarray, pinhole: np.ndarray) -> list[float]:
    """Draw a dot at each distorted projection, undistort, and measure how far each dot's centroid lands from the
    pinhole projection."""
    w, h = und.size
    errors = []
    for d, p in zip(distorted, pinhole, strict=True):
        if not (4 <= p[0] < w - 4 and 4 <= p[1] < h - 4):
            continue
        img = np.zeros((und.info.height, und.info.width, 3), np.uint8)
        cv2.circle(img, (int(round(d[0] * 16)), int(round(d[1] * 16))), 2 * 16, (255, 255, 255), -1, cv2.LINE_AA,
                   shift=4)
        out = und.image(img)[..., 0].astype(np.float64)
        ys, xs = np.nonzero(out > 0)
        wgt = out[ys, xs]
        errors.append(np.hypot((xs * wgt).sum() / wgt.sum() - p[0], (ys * wgt).sum() / wgt.sum() - p[1]))
    return errors


def test_checkerboard_corners_with_alpha_and_output_size() -> None:
    # Corners of a checkerboard plane projected with distortion land on the projection through the new pinhole K.
    gx, gy = np.meshgrid(np.linspace(-0.45, 0.45, 8), np.linspace(-0.3, 0.3, 6))
    pts = np.column_stack([gx.ravel(), gy.ravel(), np.ones(gx.size)])
    rvec, tvec = np.array([0.1, -0.15, 0.05]), np.array([0.0, 0.0, 0.1])
    distorted, _ = cv2.projectPoints(pts, rvec, tvec, K, DIST)
    und = Undistorter(INFO, (400, 300), alpha=0.5)
    assert und.size == (400, 300) and und.camera_info.width == 400
    pinhole, _ = cv2.projectPoints(pts, rvec, tvec, und.K_new, None)
    errors = _dot_errors(und, distorted.reshape(-1, 2), pinhole.reshape(-1, 2))
    assert len(errors) > 30
    assert np.median(errors) < 0.3 and max(errors) < 0.6, (np.median(errors), max(errors))


def test_fisheye_model() -> None:
    dist = np.array([0.08, -0.02, 0.004, -0.001])
    info = CameraInfo(320, 240, [[160.0, 0, 160.0], [0, 160.0, 120.0], [0, 0, 1]], dist)
    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.uniform(-0.8, 0.8, 60), rng.uniform(-0.6, 0.6, 60), np.ones(60)]).reshape(-1, 1, 3)
    distorted, _ = cv2.fisheye.projectPoints(pts, np.zeros(3), np.zeros(3), info.K, dist)
    und = Undistorter(info, model="equidistant")
    pinhole, _ = cv2.projectPoints(pts.reshape(-1, 3), np.zeros(3), np.zeros(3), und.K_new, None)
    errors = _dot_errors(und, distorted.reshape(-1, 2), pinhole.reshape(-1, 2))
    assert len(errors) > 20
    assert np.median(errors) < 0.3 and max(errors) < 0.6, (np.median(errors), max(errors))


def test_no_op_path_returns_the_input() -> None:
    und = Undistorter(CameraInfo(320, 240, K, np.zeros(5)))
    image = np.random.default_rng(2).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    depth = np.ones((240, 320), np.float32)
    assert und.identity and und.image(image) is image and und.depth(depth) is depth
    # Distorted: depth is remapped nearest-neighbour (only values of the input, 0 where nothing maps).
    depth = np.where(np.arange(320)[None, :] < 160, 1.0, 3.0).astype(np.float32) * np.ones((240, 1), np.float32)
    out = Undistorter(INFO).depth(depth)
    assert set(np.unique(out)) <= {0.0, 1.0, 3.0}
    with pytest.raises(ConfigError, match="320x240"):
        und.image(image[:100])


class _Recorder:
    """A backend that keeps every frame it is given (and answers like `identity`)."""

    name = "recorder"

    def __init__(self) -> None:
        from recon.backends.identity import IdentityBackend

        self.inner = IdentityBackend()
        self.frames: list[Frame] = []

    def reset(self) -> None:
        self.inner.reset()

    def step(self, frame: Frame) -> list:
        self.frames.append(frame)
        return self.inner.step(frame)

    def flush(self) -> list:
        return self.inner.flush()

    def stats(self) -> BackendStats:
        return self.inner.stats()


def test_pipeline_carries_undistorted_frames_and_the_pinhole_k() -> None:
    from recon.nodes.pipeline import run_pipeline
    from recon.nodes.sources import PatternSource

    source = PatternSource(3, 96, 72)
    f = 80.0
    source.camera_info = CameraInfo(96, 72, [[f, 0, 47.5], [0, f, 35.5], [0, 0, 1]], [-0.3, 0.1, 0.002, 0.001],
                                    "lens")
    und = Undistorter(source.camera_info)
    backend = _Recorder()
    stats = run_pipeline(source, backend, [], mode="inproc", encoding="raw", timeout_s=60)
    assert stats.camera.sent == 3 and len(backend.frames) == 3
    for i, frame in enumerate(backend.frames):
        captured = source.image(i)
        np.testing.assert_array_equal(frame.image, und.image(captured))
        assert not np.array_equal(frame.image, captured)
        np.testing.assert_allclose(frame.K, und.K_new)


@pytest.mark.parametrize("no_undistort", [False, True])
def test_recon_live_undistorts_unless_told_not_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  no_undistort: bool) -> None:
    import argparse

    import recon.nodes.pipeline as pipeline
    from recon.commands import live

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (72, 96, 3), dtype=np.uint8) for _ in range(2)]
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"{i:04d}.png"), img[..., ::-1])
    info = CameraInfo(96, 72, [[80.0, 0, 47.5], [0, 80.0, 35.5], [0, 0, 1]], [-0.3, 0.1, 0.002, 0.001], "lens")
    write_camera_info(tmp_path / "cam.yaml", info)
    backend = _Recorder()
    real = pipeline.run_pipeline
    monkeypatch.setattr(pipeline, "run_pipeline", lambda source, _backend, sinks, **kw: real(source, backend, sinks,
                                                                                             **kw))
    parser = argparse.ArgumentParser()
    live.add_arguments(parser)
    argv = ["--camera", str(folder), "--camera-info", str(tmp_path / "cam.yaml"), "--backend", "identity",
            "--viewer", "none", "--no-ply", "--out", str(tmp_path / "out")]
    assert live.run(parser.parse_args(argv + (["--no-undistort"] if no_undistort else []))) == 0
    assert len(backend.frames) == 2
    und = Undistorter(info)
    for frame, img in zip(backend.frames, images, strict=True):
        np.testing.assert_array_equal(frame.image, img if no_undistort else und.image(img))
        np.testing.assert_allclose(frame.K, info.K)


def test_fisheye_file_reads_as_calibration_but_not_as_a_pinhole_camera_info(tmp_path: Path) -> None:
    write_camera_info(tmp_path / "fish.yaml", CameraInfo(320, 240, K, [0.08, -0.02, 0.004, -0.001]),
                      distortion_model="equidistant")
    calib = load_camera_file(tmp_path / "fish.yaml")
    assert calib.distortion_model == "equidistant"
    with pytest.raises(SequenceError, match="equidistant"):
        load_camera_info(tmp_path / "fish.yaml")
    und = Undistorter(CameraInfo(320, 240, calib.K, calib.distortion), model=calib.distortion_model)
    assert und.fisheye and not und.identity
