"""The shared ROS message codec: every Image encoding ROS defines that a camera sends, compressed colour and depth,
CameraInfo of both ROS versions. Expected pixels are built independently of the decoder (numpy channel shuffles,
hand-made mosaics, OpenCV encoders)."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from recon.datasets.ros_msgs import (
    BAYER_ENCODINGS,
    camera_info_from_msg,
    decode_depth,
    decode_image,
    is_depth_message,
)
from recon.errors import ProtocolError


def _rgb(h: int = 6, w: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _raw(array: np.ndarray, encoding: str, pad: int = 3, big: bool = False) -> SimpleNamespace:
    """An Image message with `pad` bytes of row padding."""
    a = np.ascontiguousarray(array)
    if a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder(">" if big else "<"))
    h, w = a.shape[:2]
    row = a.reshape(h, -1).view(np.uint8)
    data = np.zeros((h, row.shape[1] + pad), np.uint8)
    data[:, : row.shape[1]] = row
    return SimpleNamespace(header=SimpleNamespace(frame_id="cam"), encoding=encoding, height=h, width=w,
                           step=data.shape[1], is_bigendian=int(big), data=data.tobytes())


@pytest.mark.parametrize("big", [False, True])
def test_every_raw_colour_encoding(big: bool) -> None:
    rgb = _rgb()
    alpha = np.full(rgb.shape[:2] + (1,), 7, np.uint8)
    wide = rgb.astype(np.uint16) * 256 + 201  # the low byte must not leak into the 8-bit result
    cases = {
        "rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.concatenate([rgb, alpha], 2),
        "bgra8": np.concatenate([rgb[..., ::-1], alpha], 2), "8UC3": rgb[..., ::-1],
        "8UC4": np.concatenate([rgb[..., ::-1], alpha], 2),
        "rgb16": wide, "bgr16": wide[..., ::-1], "rgba16": np.concatenate([wide, alpha.astype(np.uint16)], 2),
        "bgra16": np.concatenate([wide[..., ::-1], alpha.astype(np.uint16)], 2),
    }
    for encoding, array in cases.items():
        np.testing.assert_array_equal(decode_image(_raw(array, encoding, big=big)), rgb, err_msg=encoding)
    grey = rgb[..., 0]
    for encoding, array in {"mono8": grey, "8UC1": grey, "mono16": wide[..., 0], "16UC1": wide[..., 0]}.items():
        np.testing.assert_array_equal(decode_image(_raw(array, encoding, big=big)), np.dstack([grey] * 3),
                                      err_msg=encoding)


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Bayer mosaic of `rgb`: `pattern` names the colours of the top-left 2x2 block, row by row."""
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    channel = {"r": 0, "g": 1, "b": 2}
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[colour]]
    return out


@pytest.mark.parametrize("encoding", sorted(BAYER_ENCODINGS))
def test_bayer_mosaics_demosaic_to_the_right_colours(encoding: str) -> None:
    # A flat colour is reproduced exactly by any demosaicing away from the border; a swapped pattern would swap
    # red and blue (or mix green in), so this pins the ROS-to-OpenCV pattern mapping.
    colour = np.array([200, 90, 30], np.uint8)
    rgb = np.broadcast_to(colour, (8, 10, 3)).copy()
    pattern = encoding.split("_")[1][:4]
    mosaic = _mosaic(rgb, pattern)
    if encoding.endswith("16"):
        mosaic = mosaic.astype(np.uint16) * 256
    out = decode_image(_raw(mosaic, encoding))
    np.testing.assert_array_equal(out[2:-2, 2:-2], rgb[2:-2, 2:-2])


@pytest.mark.parametrize(("encoding", "order"), [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"),
                                                 ("yuyv", "yuyv")])
def test_packed_yuv422_decodes(encoding: str, order: str) -> None:
    # ROS yuv422 is UYVY with video-range BT.601 (what cv_bridge hands to OpenCV); expected colour from the
    # standard inverse: R = 1.164 (Y-16) + 1.596 (V-128), G = 1.164 (Y-16) - 0.813 (V-128) - 0.391 (U-128),
    # B = 1.164 (Y-16) + 2.018 (U-128).
    y, u, v = 120, 150, 100
    expected = np.clip(np.round([1.164 * (y - 16) + 1.596 * (v - 128),
                                 1.164 * (y - 16) - 0.813 * (v - 128) - 0.391 * (u - 128),
                                 1.164 * (y - 16) + 2.018 * (u - 128)]), 0, 255)
    quad = {"uyvy": [u, y, v, y], "yuyv": [y, u, y, v]}[order]
    packed = np.tile(np.array(quad, np.uint8), (4, 3)).reshape(4, 6, 2)
    out = decode_image(_raw(packed, encoding))
    assert out.shape == (4, 6, 3)
    assert np.abs(out.astype(int) - expected).max() <= 2  # OpenCV's fixed-point coefficients


def test_compressed_colour_and_depth() -> None:
    rgb = _rgb(16, 24)
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    np.testing.assert_array_equal(decode_image(SimpleNamespace(format="rgb8; png compressed bgr8",
                                                               data=png.tobytes())), rgb)
    # compressed_depth_image_transport: 12-byte header (format, quantisation A, B), then a 16-bit PNG.
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    ok, depth_png = cv2.imencode(".png", mm)
    msg = SimpleNamespace(format="16UC1; compressedDepth png", data=struct.pack("<iff", 0, 0, 0) + depth_png.tobytes())
    assert is_depth_message(msg)
    np.testing.assert_allclose(decode_depth(msg), [[0, 1.0], [2.5, 65.535]], rtol=1e-6)
    # 32FC1 is stored as quantised inverse depth: q = A / depth + B (0: none).
    depth = np.array([[0.0, 0.5], [2.0, 4.0]], np.float32)  # depths whose quantised value is an integer
    A, B = 100.0, -10.0
    q = np.where(depth > 0, A / np.maximum(depth, 1e-9) + B, 0).round().astype(np.uint16)
    ok, inv_png = cv2.imencode(".png", q)
    msg = SimpleNamespace(format="32FC1; compressedDepth png", data=struct.pack("<iff", 0, A, B) + inv_png.tobytes())
    np.testing.assert_allclose(decode_depth(msg), depth, rtol=1e-6)
    with pytest.raises(ProtocolError, match="depth, not colour"):
        decode_image(msg)


def test_raw_depth_and_depth_detection() -> None:
    mm = np.array([[0, 1500], [3000, 4000]], np.uint16)
    msg = _raw(mm, "16UC1")
    assert is_depth_message(msg)
    np.testing.assert_allclose(decode_depth(msg), mm / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(decode_depth(msg, depth_scale=1 / 5000), mm / 5000.0, rtol=1e-6)
    metres = np.array([[np.nan, 1.5], [np.inf, -1.0]], np.float32)
    np.testing.assert_array_equal(decode_depth(_raw(metres, "32FC1", big=True)), [[0, 1.5], [0, 0]])
    assert not is_depth_message(_raw(mm, "mono16"))  # mono16 is a grey image unless named as depth
    with pytest.raises(ProtocolError, match="unsupported image encoding"):
        decode_image(_raw(metres, "32FC1"))


@pytest.mark.parametrize(("encoding", "w", "step", "nbytes", "match"), [
    ("nv12", 2, 4, 8, "unsupported"),
    ("rgb8", 2, 5, 10, "bad image geometry"),
    ("rgb8", 2, 6, 11, "needs 12"),
    ("yuv422", 3, 6, 12, "even width"),
    ("bayer_rggb8", 1, 1, 2, "2x2"),
])
def test_bad_images_raise_protocol_errors(encoding: str, w: int, step: int, nbytes: int, match: str) -> None:
    msg = SimpleNamespace(encoding=encoding, height=2, width=w, step=step, is_bigendian=0, data=bytes(nbytes))
    with pytest.raises(ProtocolError, match=match):
        decode_image(msg)


@pytest.mark.parametrize("ros2", [False, True])
def test_camera_info_both_versions_and_models(ros2: bool) -> None:
    K = [50.0, 0, 16, 0, 52.0, 12, 0, 0, 1]
    D = [0.1, -0.05, 0.001, 0.002, 0.0]

    def msg(model: str, k: list[float] = K) -> SimpleNamespace:
        fields = {"k": k, "d": D} if ros2 else {"K": k, "D": D}
        return SimpleNamespace(header=SimpleNamespace(frame_id="front"), width=32, height=24, distortion_model=model,
                               **fields)

    info = camera_info_from_msg(msg("plumb_bob"))
    assert (info.width, info.height, info.frame_id) == (32, 24, "front")
    np.testing.assert_array_equal(info.K, np.reshape(K, (3, 3)))
    np.testing.assert_array_equal(info.distortion, D)
    with pytest.raises(ProtocolError, match="equidistant"):
        camera_info_from_msg(msg("equidistant"))
    with pytest.raises(ProtocolError, match="invalid K"):
        camera_info_from_msg(msg("plumb_bob", [0.0] * 9))
