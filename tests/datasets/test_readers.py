"""Each reader on tiny layouts written in tmp_path: frames, timestamps, depth units, intrinsics, ground truth,
and the corrupt / missing frame behaviour of `on_error`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon.datasets import OnError, detect_layout, open_sequence
from recon.datasets.base import IndexedSequence
from recon.datasets.kitti import KittiSequence
from recon.datasets.seven_scenes import SevenScenesSequence
from recon.datasets.tum import TumSequence
from recon.errors import CorruptFrameError, SequenceError
from recon.geometry import make_se3, so3_exp
from recon.io.trajectory import write_tum_trajectory
from recon.types import Frame

H, W = 12, 16


def _rgb(i: int) -> np.ndarray:
    """An image whose pixel (0, 0) encodes the frame number, so order and identity can be checked."""
    rng = np.random.default_rng(i)
    img = rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
    img[0, 0] = (i, 255 - i, 7)
    return img


def _save_rgb(path: Path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(i)).save(path)


def _save_depth(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    d = np.full((H, W), value, dtype=np.uint16)
    d[0, 1] = 0
    Image.fromarray(d).save(path)


def _pose(i: int) -> np.ndarray:
    return make_se3(so3_exp(np.array([0.0, 0.02 * i, 0.01 * i])), np.array([0.1 * i, -0.05 * i, 0.02 * i]))


def _ids(frames: list[Frame]) -> list[int]:
    return [int(f.image[0, 0, 0]) for f in frames]


def _write_tum(root: Path, n: int = 6, *, depth_offset_s: float = 0.004) -> list[float]:
    """A TUM folder: RGB at 30 Hz from t=100 s, depth 4 ms later, ground truth at 100 Hz."""
    t_rgb = [100.0 + i / 30 for i in range(n)]
    rgb_lines, depth_lines = ["# color images"], ["# depth maps"]
    for i, t in enumerate(t_rgb):
        name = f"{t:.6f}.png"
        _save_rgb(root / "rgb" / name, i)
        td = t + depth_offset_s
        _save_depth(root / "depth" / f"{td:.6f}.png", 5000 * (i + 1))  # i+1 metres
        rgb_lines.append(f"{t:.6f} rgb/{name}")
        depth_lines.append(f"{td:.6f} depth/{td:.6f}.png")
    (root / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (root / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    t_gt = np.arange(99.9, 100.0 + n / 30 + 0.1, 0.01)
    # Ground truth moves linearly in x at 1 m/s, so interpolated poses are known exactly.
    T = np.stack([make_se3(np.eye(3), np.array([t - 100.0, 0.0, 1.0])) for t in t_gt])
    write_tum_trajectory(root / "groundtruth.txt", np.round(t_gt * 1e9).astype(np.int64), T)
    return t_rgb


# ----------------------------------------------------------------------------------------------------------------
# TUM RGB-D


def test_tum_reads_associated_rgbd_with_ground_truth(tmp_path: Path) -> None:
    root = tmp_path / "rgbd_dataset_freiburg1_xyz"
    t_rgb = _write_tum(root)
    seq = open_sequence(root)
    assert isinstance(seq, TumSequence) and seq.has_depth and len(seq) == 6
    frames = list(seq)
    assert _ids(frames) == [0, 1, 2, 3, 4, 5]
    assert [f.seq for f in frames] == list(range(6))
    assert [f.t_ns for f in frames] == [round(t * 1e6) * 1000 for t in t_rgb]
    for i, f in enumerate(frames):
        assert f.stream_id == "rgbd_dataset_freiburg1_xyz"
        np.testing.assert_array_equal(f.image, _rgb(i))
        assert f.depth is not None and f.depth.dtype == np.float32
        assert f.depth[5, 5] == pytest.approx(i + 1.0) and f.depth[0, 1] == 0.0  # /5000, 0 stays invalid
        # Ground truth interpolated at the frame time: x = t - 100 s.
        np.testing.assert_allclose(f.meta["T_world_cam_gt"][:3, 3], [t_rgb[i] - 100.0, 0.0, 1.0], atol=1e-6)
    # freiburg1 calibration by folder name, scaled from 640x480 to the 16x12 images.
    assert seq.camera_info is not None and (seq.camera_info.width, seq.camera_info.height) == (W, H)
    np.testing.assert_allclose(seq.camera_info.K[0, 0], 517.3 * W / 640)
    assert seq.camera_info.distortion.size == 5
    assert seq.ground_truth is not None and len(seq.ground_truth) > 6
    assert seq.stats.frames_read == 6 and seq.stats.frames_skipped == 0


def test_tum_camera_json_overrides_defaults_and_scales_depth(tmp_path: Path) -> None:
    root = tmp_path / "seq"
    _write_tum(root, n=2)
    (root / "camera.json").write_text('{"fx": 10, "fy": 11, "cx": 7.5, "cy": 5.5, "width": 16, "height": 12, '
                                      '"depth_scale": 1000}')
    seq = open_sequence(root)
    np.testing.assert_allclose(seq.camera_info.K, [[10, 0, 7.5], [0, 11, 5.5], [0, 0, 1]])
    f = next(iter(seq))
    np.testing.assert_allclose(f.K, seq.camera_info.K)
    assert f.depth[5, 5] == pytest.approx(5.0)  # 5000 units / 1000 per metre


def test_tum_drops_rgb_without_depth_within_max_diff(tmp_path: Path) -> None:
    root = tmp_path / "seq"
    _write_tum(root, n=4)
    lines = (root / "depth.txt").read_text().splitlines()
    # Move the depth of frame 2 far away in time: that RGB image has no partner any more.
    t, name = lines[3].split()
    lines[3] = f"{float(t) + 0.5:.6f} {name}"
    (root / "depth.txt").write_text("\n".join(lines) + "\n")
    assert _ids(list(TumSequence(root, max_diff_s=0.02))) == [0, 1, 3]


def test_tum_rgb_only_without_depth_txt(tmp_path: Path) -> None:
    root = tmp_path / "seq"
    _write_tum(root, n=3)
    (root / "depth.txt").unlink()
    seq = open_sequence(root)
    assert not seq.has_depth
    assert [f.depth for f in seq] == [None, None, None]


def _corrupt_tum(tmp_path: Path) -> tuple[Path, Path, Path]:
    """TUM folder of 6 frames where the RGB of frame 2 is a truncated PNG and the depth of frame 4 is missing."""
    root = tmp_path / "broken"
    _write_tum(root, n=6)
    rgb_names = [ln.split()[1] for ln in (root / "rgb.txt").read_text().splitlines()[1:]]
    depth_names = [ln.split()[1] for ln in (root / "depth.txt").read_text().splitlines()[1:]]
    truncated = root / rgb_names[2]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    missing = root / depth_names[4]
    missing.unlink()
    return root, truncated, missing


def test_stop_raises_naming_the_truncated_png(tmp_path: Path) -> None:
    root, truncated, _ = _corrupt_tum(tmp_path)
    seq = open_sequence(root, on_error=OnError.STOP)
    it = iter(seq)
    assert _ids([next(it), next(it)]) == [0, 1]
    with pytest.raises(CorruptFrameError, match="cannot decode") as info:
        next(it)
    assert str(truncated) in str(info.value)
    assert seq.stats.frames_read == 2 and seq.stats.frames_skipped == 0


def test_stop_raises_naming_the_missing_depth(tmp_path: Path) -> None:
    root, truncated, missing = _corrupt_tum(tmp_path)
    truncated.unlink()
    _save_rgb(truncated, 2)  # repair the RGB: the first fault is now the missing depth map
    with pytest.raises(CorruptFrameError, match="missing") as info:
        list(open_sequence(root, on_error="stop"))
    assert str(missing) in str(info.value)


def test_skip_counts_logs_and_continues(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, truncated, missing = _corrupt_tum(tmp_path)
    seq = open_sequence(root, on_error=OnError.SKIP)
    with caplog.at_level(logging.WARNING, logger="recon.datasets"):
        frames = list(seq)
    assert _ids(frames) == [0, 1, 3, 5]
    assert [f.seq for f in frames] == [0, 1, 3, 5]  # positions in the sequence: gaps show the skips
    assert seq.stats.frames_read == 4 and seq.stats.frames_skipped == 2
    assert seq.stats.skipped_paths == [str(truncated), str(missing)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and str(truncated) in warnings[0] and str(missing) in warnings[1]
    # A second pass starts the counters again instead of doubling them.
    list(seq)
    assert seq.stats.frames_skipped == 2


def test_stride_and_max_frames(tmp_path: Path) -> None:
    root = tmp_path / "seq"
    _write_tum(root, n=6)
    seq = open_sequence(root, stride=2, max_frames=2)
    assert len(seq) == 2 and _ids(list(seq)) == [0, 2]
    with pytest.raises(ValueError, match="stride"):
        open_sequence(root, stride=0)


# ----------------------------------------------------------------------------------------------------------------
# Image folder


def test_image_folder_natural_order_and_timestamps_from_names(tmp_path: Path) -> None:
    root = tmp_path / "stamped"
    stamps = ["1305031102.175304", "1305031102.211214", "1305031102.243211"]
    for i, s in enumerate(stamps):
        _save_rgb(root / f"{s}.png", i)
    frames = list(open_sequence(root))
    assert detect_layout(root) == "folder"
    assert [f.t_ns for f in frames] == [1305031102175304000, 1305031102211214000, 1305031102243211000]
    assert _ids(frames) == [0, 1, 2] and frames[0].K is None

    root = tmp_path / "numbered"
    for i in (1, 2, 10, 11):  # natural order: 2 before 10 (plain string order would put 10 first)
        _save_rgb(root / f"frame_{i:d}.png", i)
    seq = open_sequence(root, fps=10.0)
    frames = list(seq)
    assert _ids(frames) == [1, 2, 10, 11]
    assert [f.t_ns for f in frames] == [100_000_000, 200_000_000, 1_000_000_000, 1_100_000_000]
    assert seq.name == "numbered" and frames[0].stream_id == "numbered"


def test_image_folder_fps_by_position_and_camera_file(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        _save_rgb(root / name, i)
    (root / "intrinsics.txt").write_text("20 20 7.5 5.5\n")
    seq = open_sequence(root, fps=20.0)
    frames = list(seq)
    assert [f.t_ns for f in frames] == [0, 50_000_000, 100_000_000]
    assert seq.camera_info is not None and (seq.camera_info.width, seq.camera_info.height) == (W, H)
    np.testing.assert_allclose(frames[1].K[0], [20, 0, 7.5])


def test_image_folder_corrupt_file(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    for i in range(3):
        _save_rgb(root / f"{i}.png", i)
    (root / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    seq = open_sequence(root, on_error="skip")
    assert _ids(list(seq)) == [0, 2] and seq.stats.skipped_paths == [str(root / "1.png")]


# ----------------------------------------------------------------------------------------------------------------
# Video


def _write_video(path: Path, n: int, fps: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            img = np.zeros((48, 64, 3), dtype=np.uint8)
            img[:, : 4 * (i + 1)] = 200  # a bright band that grows by 4 px per frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_frames_and_container_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_video(path, n=8, fps=10)
    seq = open_sequence(path)
    assert detect_layout(path) == "video" and seq.name == "clip" and len(seq) == 8
    frames = list(seq)
    assert len(frames) == 8 and seq.stats.frames_read == 8
    t = np.array([f.t_ns for f in frames])
    np.testing.assert_allclose(np.diff(t), 100_000_000, atol=1_000_000)  # 10 frames/s from the container
    widths = [int((f.image[24, :, 0] > 100).sum()) for f in frames]
    assert all(abs(w - 4 * (i + 1)) <= 2 for i, w in enumerate(widths)), widths
    assert frames[0].image.shape == (48, 64, 3) and frames[0].K is None

    sub = list(open_sequence(path, stride=3, max_frames=2))
    assert [f.seq for f in sub] == [0, 1] and sub[1].t_ns == frames[3].t_ns


def test_video_undecodable_packet_is_skipped_or_stops(tmp_path: Path) -> None:
    """MJPEG packets are independent JPEGs: wiping the 4th one gives exactly one undecodable packet."""
    import av

    path = tmp_path / "mj.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray(path.read_bytes())
    soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(soi) == 6
    data[soi[3]:soi[4] - 16] = b"\xff" * (soi[4] - 16 - soi[3])
    path.write_bytes(bytes(data))

    seq = open_sequence(path, on_error="skip")
    frames = list(seq)
    assert [round(float(f.image.mean()) / 40) for f in frames] == [0, 1, 2, 4, 5]
    assert [f.seq for f in frames] == [0, 1, 2, 4, 5]
    assert seq.stats.frames_skipped == 1 and "0.300 s" in seq.stats.skipped_paths[0]
    with pytest.raises(CorruptFrameError, match="mj.avi: cannot decode packet at 0.300 s"):
        list(open_sequence(path, on_error="stop"))


def test_video_that_is_not_a_video(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(SequenceError, match="bad.mp4"):
        open_sequence(bad)


# ----------------------------------------------------------------------------------------------------------------
# 7-Scenes


def test_seven_scenes_sequence_and_scene_folder(tmp_path: Path) -> None:
    seq_dir = tmp_path / "chess" / "seq-01"
    for i in range(3):
        _save_rgb(seq_dir / f"frame-{i:06d}.color.png", i)
        d = np.full((H, W), 1500 + i, dtype=np.uint16)
        d[2, 3] = 65535
        _save_depth(seq_dir / f"frame-{i:06d}.depth.png", 0)
        Image.fromarray(d).save(seq_dir / f"frame-{i:06d}.depth.png")
        np.savetxt(seq_dir / f"frame-{i:06d}.pose.txt", _pose(i))
    for path in (seq_dir, tmp_path / "chess"):  # a scene with one sequence opens that sequence
        seq = open_sequence(path, fps=30.0)
        assert isinstance(seq, SevenScenesSequence) and seq.name == "chess-seq-01"
        frames = list(seq)
        assert _ids(frames) == [0, 1, 2]
        assert [f.t_ns for f in frames] == [0, 33_333_333, 66_666_667]
        assert frames[1].depth[5, 5] == pytest.approx(1.501) and frames[1].depth[2, 3] == 0.0  # mm; 65535 invalid
        np.testing.assert_allclose(frames[2].meta["T_world_cam_gt"], _pose(2), atol=1e-12)
        np.testing.assert_allclose(seq.camera_info.K[0], [585.0 * W / 640, 0, 320.0 * W / 640])
        assert len(seq.ground_truth) == 3
    (tmp_path / "chess" / "seq-02").mkdir()
    _save_rgb(tmp_path / "chess" / "seq-02" / "frame-000000.color.png", 0)
    with pytest.raises(SequenceError, match="seq-01, seq-02"):
        open_sequence(tmp_path / "chess")


# ----------------------------------------------------------------------------------------------------------------
# KITTI odometry


def test_kitti_sequence_with_calib_times_and_poses(tmp_path: Path) -> None:
    seq_dir = tmp_path / "dataset" / "sequences" / "05"
    for i in range(4):
        _save_rgb(seq_dir / "image_2" / f"{i:06d}.png", i)
    fx, cx, cy, baseline = 700.0, 600.0, 180.0, 0.06
    P0 = f"{fx} 0 {cx} 0 0 {fx} {cy} 0 0 0 1 0"
    P2 = f"{fx} 0 {cx} {fx * baseline} 0 {fx} {cy} 0 0 0 1 0"
    (seq_dir / "calib.txt").write_text(f"P0: {P0}\nP1: {P0}\nP2: {P2}\nP3: {P2}\n")
    (seq_dir / "times.txt").write_text("\n".join(f"{0.1037 * i:.6e}" for i in range(4)) + "\n")
    poses_dir = tmp_path / "dataset" / "poses"
    poses_dir.mkdir(parents=True)
    np.savetxt(poses_dir / "05.txt", np.stack([_pose(i)[:3].reshape(-1) for i in range(4)]))

    seq = open_sequence(seq_dir)
    assert isinstance(seq, KittiSequence) and detect_layout(seq_dir) == "kitti"
    frames = list(seq)
    assert _ids(frames) == [0, 1, 2, 3]
    assert [f.t_ns for f in frames] == [round(0.1037 * i * 1e9) for i in range(4)]
    np.testing.assert_allclose(frames[0].K, [[fx, 0, cx], [0, fx, cy], [0, 0, 1]])
    # Ground truth of camera 0 moved to camera 2: P2 = K [I | t] with t = (b, 0, 0) maps camera-0 points into
    # camera 2, so camera 2's centre in camera-0 coordinates is -t (KITTI's colour camera sits 6 cm to the left).
    T0 = _pose(3)
    expected = T0 @ make_se3(np.eye(3), np.array([-baseline, 0.0, 0.0]))
    np.testing.assert_allclose(frames[3].meta["T_world_cam_gt"], expected, atol=1e-9)
    assert seq.ground_truth is not None and len(seq.ground_truth) == 4


# ----------------------------------------------------------------------------------------------------------------
# ScanNet (the replay test in tests/recon/test_replay_datasets.py checks the conventions against a TUM twin)


def _write_scannet(root: Path, n: int = 3) -> None:
    for i in range(n):
        _save_rgb(root / "color" / f"{i}.jpg", i)
        _save_depth(root / "depth" / f"{i}.png", 1500 + i)
        (root / "pose").mkdir(exist_ok=True)
        np.savetxt(root / "pose" / f"{i}.txt", _pose(i))
    (root / "intrinsic").mkdir()
    K4 = np.eye(4)
    K4[:3, :3] = [[12.0, 0, 7.5], [0, 12.0, 5.5], [0, 0, 1]]
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", K4)


def test_scannet_scene_frames_depth_and_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "scene0001_00"
    _write_scannet(root)
    seq = open_sequence(root, fps=10.0)
    frames = list(seq)
    assert [f.t_ns for f in frames] == [0, 100_000_000, 200_000_000]
    assert frames[2].depth[0, 0] == pytest.approx(1.502) and frames[0].K[0, 0] == 12.0
    np.testing.assert_allclose(frames[1].meta["T_world_cam_gt"], _pose(1), atol=1e-12)
    (root / "depth" / "1.png").unlink()
    with pytest.raises(CorruptFrameError, match="1.png"):
        list(open_sequence(root))
    skipping = open_sequence(root, on_error=OnError.SKIP)
    assert len(list(skipping)) == 2 and skipping.stats.frames_skipped == 1
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", np.zeros((4, 4)))
    with pytest.raises(SequenceError, match="not a pinhole camera matrix"):
        open_sequence(root)


def test_nerfstudio_folder_order_axes_depth_units(tmp_path: Path) -> None:
    """What ns-process-data writes: top-level intrinsics, frames in no particular order, OpenGL camera-to-world
    poses; depth as .npy in the units of depth_unit_scale_factor."""
    import json

    from recon.datasets.nerfstudio import NerfstudioSequence
    from recon.geometry.transforms import OPENCV_TO_OPENGL

    frames = []
    (tmp_path / "depth").mkdir()
    for i in (2, 0, 1):
        _save_rgb(tmp_path / "images" / f"frame_{i + 1:05d}.png", i)
        np.save(tmp_path / "depth" / f"frame_{i + 1:05d}.npy", np.full((H, W), 2000.0 + i))
        frames.append({"file_path": f"images/frame_{i + 1:05d}.png", "depth_file_path": f"depth/frame_{i + 1:05d}.npy",
                       "transform_matrix": (_pose(i) @ OPENCV_TO_OPENGL).tolist()})
    (tmp_path / "transforms.json").write_text(json.dumps({
        "camera_model": "OPENCV", "fl_x": 12.0, "fl_y": 12.5, "cx": 8.0, "cy": 6.0, "w": W, "h": H,
        "depth_unit_scale_factor": 1e-3, "frames": frames}))
    assert detect_layout(tmp_path) == "nerfstudio"
    seq = open_sequence(tmp_path, fps=10.0)
    assert isinstance(seq, NerfstudioSequence) and seq.has_depth
    got = list(seq)
    assert _ids(got) == [0, 1, 2] and [f.t_ns for f in got] == [100_000_000, 200_000_000, 300_000_000]
    np.testing.assert_allclose(got[1].K, [[12, 0, 7.5], [0, 12.5, 5.5], [0, 0, 1]])
    assert got[2].depth[3, 3] == pytest.approx(2.002)
    np.testing.assert_allclose(got[2].meta["T_world_cam_gt"], _pose(2), atol=1e-12)
    del frames[1]["depth_file_path"]  # frame_00001: the first in order
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 12.0, "w": W, "h": H, "frames": frames}))
    with pytest.raises(CorruptFrameError, match="no depth_file_path"):
        list(open_sequence(tmp_path))


def test_scene_folder_with_depth_in_no_known_layout_is_refused(tmp_path: Path) -> None:
    """images/ beside depth/ without a layout that says how they pair: refused, not read as colour alone."""
    for i in range(2):
        _save_rgb(tmp_path / "images" / f"{i}.png", i)
        _save_depth(tmp_path / "depth" / f"{i}.png", 1000)
    with pytest.raises(SequenceError, match="depth/ in no RGB-D layout"):
        open_sequence(tmp_path)
    assert len(list(open_sequence(tmp_path / "images"))) == 2


# ----------------------------------------------------------------------------------------------------------------
# Detection


def test_unknown_layout_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SequenceError, match="unknown sequence layout"):
        open_sequence(tmp_path)
    with pytest.raises(SequenceError, match="no such file"):
        open_sequence(tmp_path / "nope")
    with pytest.raises(SequenceError, match="not a video file"):
        open_sequence(tmp_path / "notes.txt")


def test_readers_implement_the_sequence_protocol(tmp_path: Path) -> None:
    from recon.datasets.base import Sequence

    root = tmp_path / "seq"
    _write_tum(root, n=2)
    seq = open_sequence(root)
    assert isinstance(seq, Sequence) and isinstance(seq, IndexedSequence)
