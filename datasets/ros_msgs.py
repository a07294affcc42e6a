"""The one codec for ROS camera messages (sensor_msgs Image, CompressedImage, CameraInfo), ROS 1 and ROS 2.

Used by the bag reader (`recon.datasets.bag`) and the ROS node (`recon.nodes.ros`), so a bag played offline and
the same topics received live decode to the same frames. Messages are read by duck typing: rosbags' classes,
rospy's and rclpy's share field names except the stamp (`secs`/`nsecs` in ROS 1, `sec`/`nanosec` in ROS 2; rosbags
gives `sec`/`nanosec` for both) and CameraInfo's `K`/`D` (ROS 1) vs `k`/`d` (ROS 2).

Colour (`decode_image` -> uint8 HxWx3 RGB):
- raw Image: rgb8, bgr8, rgba8, bgra8, rgb16, bgr16, rgba16, bgra16, mono8, mono16, 8UC1, 8UC3, 8UC4, 16UC1
  (16-bit channels keep their top 8 bits: a fixed mapping, so brightness does not flicker frame to frame), the
  Bayer mosaics bayer_{rggb,bggr,gbrg,grbg}{8,16} (demosaiced by OpenCV), and yuv422 (UYVY) / yuv422_yuy2;
- CompressedImage: JPEG or PNG, colour or grey, 8 or 16 bit.

Depth (`decode_depth` -> float32 HxW metres, 0 where invalid):
- raw Image 16UC1 / mono16 (times `depth_scale`, millimetres by default) and 32FC1 (metres);
- CompressedImage "compressedDepth" (image_transport's compressed_depth_image_transport: a 12-byte header, then a
  PNG of 16-bit millimetres, or for 32FC1 a PNG of quantised inverse depth).

Errors are `ProtocolError` naming the encoding and what was wrong; callers decide whether that skips a frame.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from recon.errors import ProtocolError
from recon.types import CameraInfo

NS_PER_S = 1_000_000_000

# Raw colour encodings: name -> (numpy dtype, channels, channel order of the first three).
RAW_ENCODINGS: dict[str, tuple[str, int, str]] = {
    "rgb8": ("u1", 3, "rgb"),
    "bgr8": ("u1", 3, "bgr"),
    "rgba8": ("u1", 4, "rgb"),
    "bgra8": ("u1", 4, "bgr"),
    "rgb16": ("u2", 3, "rgb"),
    "bgr16": ("u2", 3, "bgr"),
    "rgba16": ("u2", 4, "rgb"),
    "bgra16": ("u2", 4, "bgr"),
    "mono8": ("u1", 1, "grey"),
    "8UC1": ("u1", 1, "grey"),
    "8UC3": ("u1", 3, "bgr"),  # OpenCV's default order, as cv_bridge treats untyped 3-channel images
    "8UC4": ("u1", 4, "bgr"),
    "mono16": ("u2", 1, "grey"),
    "16UC1": ("u2", 1, "grey"),
}

# Bayer mosaics: the pattern names the colours of the top-left 2x2 block, row by row.
BAYER_ENCODINGS: dict[str, tuple[str, str]] = {
    f"bayer_{pattern}{bits}": ("u1" if bits == "8" else "u2", pattern)
    for pattern in ("rggb", "bggr", "gbrg", "grbg") for bits in ("8", "16")
}
# OpenCV >= 4.5 names the codes by the top-left block (COLOR_BayerRGGB2RGB); older releases name them by the
# second row's block (RGGB -> COLOR_BayerBG2RGB). Both spellings mean the same code.
_BAYER_OLD_NAMES = {"rggb": "BG", "bggr": "RG", "gbrg": "GR", "grbg": "GB"}

YUV_ENCODINGS = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")

DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")

COLOUR_ENCODINGS = (*RAW_ENCODINGS, *BAYER_ENCODINGS, *YUV_ENCODINGS)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"

# CameraInfo distortion models whose coefficients are OpenCV's k1, k2, p1, p2[, k3...] (what CameraInfo carries).
PINHOLE_MODELS = ("", "plumb_bob", "rational_polynomial")


# --------------------------------------------------------------------------------------------- time


def stamp_to_ns(stamp: Any) -> int:
    """Integer nanoseconds from a ROS 1 (`secs`, `nsecs`) or ROS 2 / rosbags (`sec`, `nanosec`) stamp."""
    if hasattr(stamp, "secs"):
        return int(stamp.secs) * NS_PER_S + int(stamp.nsecs)
    return int(stamp.sec) * NS_PER_S + int(getattr(stamp, "nanosec", getattr(stamp, "nsec", 0)))


def header_stamp_ns(msg: Any, fallback: int | None = None) -> int:
    """The message's header stamp in ns; `fallback` (the bag's log time) when it has none or it is zero."""
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    t_ns = stamp_to_ns(stamp) if stamp is not None else 0
    if t_ns == 0 and fallback is not None:
        return int(fallback)
    return t_ns


# --------------------------------------------------------------------------------------------- raw images


def _raw_pixels(encoding: str, dtype_kind: str, channels: int, height: int, width: int, step: int,
                is_bigendian: bool, data: Any) -> np.ndarray:
    """HxWxC array of a raw image's pixels (row padding and byte order honoured, checked against the size)."""
    dtype = np.dtype(dtype_kind).newbyteorder(">" if is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    if height <= 0 or width <= 0 or step < row_bytes:
        raise ProtocolError(f"bad image geometry {width}x{height} step {step} for {encoding} (row needs {row_bytes})")
    buf = np.frombuffer(memoryview(data), dtype=np.uint8)
    if buf.size < step * height:
        raise ProtocolError(f"image data has {buf.size} bytes, {encoding} {width}x{height} step {step} needs "
                            f"{step * height}")
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    return np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)


def _to_8bit(img: np.ndarray) -> np.ndarray:
    return (img.astype(np.uint16) >> 8).astype(np.uint8) if img.dtype.itemsize == 2 else img.astype(np.uint8)


def _bayer_code(pattern: str) -> int:
    import cv2

    code = getattr(cv2, f"COLOR_Bayer{pattern.upper()}2RGB", None)
    return int(code if code is not None else getattr(cv2, f"COLOR_Bayer{_BAYER_OLD_NAMES[pattern]}2RGB"))


def decode_raw_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any) -> np.ndarray:
    """uint8 HxWx3 RGB from the fields of a sensor_msgs/Image in any colour encoding of COLOUR_ENCODINGS."""
    if encoding in RAW_ENCODINGS:
        kind, channels, order = RAW_ENCODINGS[encoding]
        img = _to_8bit(_raw_pixels(encoding, kind, channels, height, width, step, is_bigendian, data))
        if channels == 1:
            return np.repeat(img, 3, axis=2)
        if order == "bgr":
            img = img[..., 2::-1]
        return np.ascontiguousarray(img[..., :3])
    if encoding in BAYER_ENCODINGS:
        import cv2

        kind, pattern = BAYER_ENCODINGS[encoding]
        if width < 2 or height < 2:
            raise ProtocolError(f"bad image geometry {width}x{height} for {encoding}: a Bayer mosaic needs 2x2 pixels")
        mosaic = _raw_pixels(encoding, kind, 1, height, width, step, is_bigendian, data)[..., 0]
        return _to_8bit(cv2.cvtColor(np.ascontiguousarray(mosaic), _bayer_code(pattern)))
    if encoding in YUV_ENCODINGS:
        import cv2

        if width % 2:
            raise ProtocolError(f"bad image geometry {width}x{height} for {encoding}: packed 4:2:2 needs an even width")
        packed = _raw_pixels(encoding, "u1", 2, height, width, step, is_bigendian, data)
        code = cv2.COLOR_YUV2RGB_UYVY if encoding in ("yuv422", "uyvy") else cv2.COLOR_YUV2RGB_YUY2
        return np.ascontiguousarray(cv2.cvtColor(packed, code))
    raise ProtocolError(f"unsupported image encoding {encoding!r}; supported: {', '.join(COLOUR_ENCODINGS)}")


def decode_depth_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any,
                       depth_scale: float = 0.001) -> np.ndarray:
    """float32 HxW metres from a depth Image: 16UC1/mono16 times `depth_scale` (mm: 0.001) or 32FC1 metres.

    Invalid depth (0, NaN, inf, negative) becomes 0, the "no depth" value of Frame.depth.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise ProtocolError(f"unsupported depth encoding {encoding!r}; supported: {', '.join(DEPTH_ENCODINGS)}")
    kind = "f4" if encoding == "32FC1" else "u2"
    raw = _raw_pixels(encoding, kind, 1, height, width, step, is_bigendian, data)[..., 0]
    scale = np.float32(1.0) if encoding == "32FC1" else np.float32(depth_scale)
    depth = raw.astype(np.float32) * scale
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


# ------------------------------------------------------------------------------------ compressed images


def is_compressed_depth_format(fmt: str) -> bool:
    return "compresseddepth" in fmt.lower()


def decode_compressed_image(fmt: str, data: Any) -> np.ndarray:
    """uint8 HxWx3 RGB from a sensor_msgs/CompressedImage (jpeg or png, colour or grey, 8 or 16 bit)."""
    import cv2

    fmt_l = fmt.lower()
    if is_compressed_depth_format(fmt_l):
        raise ProtocolError(f"compressedDepth images are depth, not colour images (format {fmt!r})")
    if fmt_l and not any(k in fmt_l for k in ("jpeg", "jpg", "png")):
        raise ProtocolError(f"unsupported CompressedImage format {fmt!r}; supported: jpeg, png")
    img = cv2.imdecode(np.frombuffer(memoryview(data), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ProtocolError(f"cannot decode CompressedImage ({fmt!r}, {len(data)} bytes)")
    img = _to_8bit(img)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    # OpenCV decodes to BGR(A), whatever the message's format string says about the source order.
    return np.ascontiguousarray(img[..., 2::-1] if img.shape[2] >= 3 else np.repeat(img[..., :1], 3, axis=2))


_DEPTH_HEADER = struct.Struct("<iff")  # compressed_depth_image_transport ConfigHeader: format, depthQuantA, B


def decode_compressed_depth(fmt: str, data: Any, depth_scale: float = 0.001) -> np.ndarray:
    """float32 HxW metres from a "compressedDepth" CompressedImage (16UC1 millimetres or 32FC1 inverse depth)."""
    import cv2

    buf = bytes(data)
    if len(buf) <= _DEPTH_HEADER.size:
        raise ProtocolError(f"compressedDepth message of {len(buf)} bytes has no image after its header")
    _, quant_a, quant_b = _DEPTH_HEADER.unpack_from(buf)
    raw = cv2.imdecode(np.frombuffer(buf, np.uint8, offset=_DEPTH_HEADER.size), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
        raise ProtocolError(f"cannot decode compressedDepth ({fmt!r}): expected a 16-bit single-channel PNG")
    if fmt.split(";")[0].strip() == "32FC1":
        # Quantised inverse depth: value = quant_a / depth + quant_b; 0 marks no depth.
        q = raw.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.where(q > 0, np.float32(quant_a) / (q - np.float32(quant_b)), 0.0).astype(np.float32)
    else:
        depth = raw.astype(np.float32) * np.float32(depth_scale)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


# ------------------------------------------------------------------------------------------ messages


def is_compressed(msg: Any) -> bool:
    """CompressedImage messages have `format`; raw Images have `encoding`."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def is_depth_message(msg: Any) -> bool:
    """True for a depth image: raw 16UC1 / 32FC1 or a compressedDepth CompressedImage (mono16 counts as grey)."""
    if is_compressed(msg):
        return is_compressed_depth_format(str(msg.format))
    return str(msg.encoding) in ("16UC1", "32FC1")


def decode_image(msg: Any) -> np.ndarray:
    """uint8 HxWx3 RGB from an Image or CompressedImage of ROS 1 or ROS 2."""
    if is_compressed(msg):
        return decode_compressed_image(str(msg.format), bytes(msg.data))
    return decode_raw_image(str(msg.encoding), int(msg.height), int(msg.width), int(msg.step),
                            bool(msg.is_bigendian), bytes(msg.data))


def decode_depth(msg: Any, depth_scale: float = 0.001) -> np.ndarray:
    """float32 HxW metres from a depth Image or compressedDepth CompressedImage (16-bit: `depth_scale` m/unit)."""
    if is_compressed(msg):
        return decode_compressed_depth(str(msg.format), bytes(msg.data), depth_scale)
    return decode_depth_image(str(msg.encoding), int(msg.height), int(msg.width), int(msg.step),
                              bool(msg.is_bigendian), bytes(msg.data), depth_scale)


def image_msg_encoding(msg: Any) -> str:
    """The encoding (raw) or format (compressed) string of an image message, for logs and topic listings."""
    return str(msg.format) if is_compressed(msg) else str(msg.encoding)


def camera_info_from_msg(msg: Any) -> CameraInfo:
    """CameraInfo from a sensor_msgs/CameraInfo of ROS 1 (`K`, `D`) or ROS 2 (`k`, `d`).

    Raises ProtocolError for an uncalibrated camera (K = 0) and for distortion models whose coefficients are not
    OpenCV's pinhole ones (equidistant fisheye: undistort with `recon.calib.Undistorter(model="equidistant")`).
    """
    K = getattr(msg, "K", None)
    if K is None:
        K = msg.k
    D = getattr(msg, "D", None)
    if D is None:
        D = getattr(msg, "d", [])
    K_33 = np.asarray(K, dtype=np.float64).reshape(-1)
    if K_33.size != 9 or K_33[0] <= 0 or K_33[4] <= 0:
        raise ProtocolError(f"camera_info has an invalid K {list(K_33)}")
    dist = np.asarray(D, dtype=np.float64).reshape(-1)
    model = str(getattr(msg, "distortion_model", "") or "").lower()
    if model not in PINHOLE_MODELS and np.any(dist != 0):
        raise ProtocolError(f"camera_info distortion_model {model!r} is not a pinhole model (plumb_bob, "
                            "rational_polynomial); its coefficients cannot be applied as OpenCV's k1, k2, p1, p2")
    frame_id = str(getattr(getattr(msg, "header", None), "frame_id", "") or "camera")
    return CameraInfo(int(msg.width), int(msg.height), K_33.reshape(3, 3), dist, frame_id)
