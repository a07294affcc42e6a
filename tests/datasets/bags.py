"""Bags written with rosbags for the tests: ROS 1 `.bag` and rosbag2 MCAP, from frames of any sequence.

`write_rgbd_bag` stores colour (raw or compressed), registered depth (16UC1 millimetres or 32FC1 metres, on a
topic written *before* the colour one) and a CameraInfo that may state another resolution than the images.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from recon.types import CameraInfo, Frame


def _typestore(ros1: bool):  # noqa: ANN202 - rosbags Typestore
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)


def _header(types: dict, t_ns: int, frame_id: str, ros1: bool, seq: int) -> object:
    stamp = types["builtin_interfaces/msg/Time"](sec=t_ns // 10**9, nanosec=t_ns % 10**9)
    if ros1:
        return types["std_msgs/msg/Header"](seq=seq, stamp=stamp, frame_id=frame_id)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def image_msg(types: dict, header: object, array: np.ndarray, encoding: str) -> object:
    """A sensor_msgs/Image of `array` (HxW or HxWxC) in `encoding` (little-endian, no row padding)."""
    a = np.ascontiguousarray(array)
    h, w = a.shape[:2]
    return types["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                                          step=a.nbytes // h, data=a.view(np.uint8).reshape(-1))


def camera_info_msg(types: dict, header: object, info: CameraInfo, ros1: bool) -> object:
    d = np.zeros(5) if info.distortion.size == 0 else info.distortion
    P = np.hstack([info.K, np.zeros((3, 1))]).reshape(-1)
    names = ("D", "K", "R", "P") if ros1 else ("d", "k", "r", "p")
    kw = dict(zip(names, (d, info.K.reshape(-1), np.eye(3).reshape(-1), P), strict=True))
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types["sensor_msgs/msg/CameraInfo"](header=header, height=info.height, width=info.width,
                                               distortion_model="plumb_bob", binning_x=0, binning_y=0, roi=roi, **kw)


def write_rgbd_bag(path: Path, frames: Iterable[Frame], info: CameraInfo | None, *, ros1: bool,
                   colour: str | None = "rgb8", depth: str | None = "16UC1",
                   frame_id: str = "camera_color_optical_frame", depth_frame_id: str | None = None,
                   depth_topic: str = "/camera/aligned_depth_to_color/image_raw", extra_topics: bool = True,
                   garbled: tuple[int, ...] = ()) -> Path:
    """Write `frames` to a bag; returns the path to open (the .bag file, or the rosbag2 folder).

    Args:
        colour: "rgb8", "bgr8" (raw), "jpeg" / "png" (CompressedImage) or None (no colour topic).
        depth: "16UC1" (millimetres), "32FC1" (metres) or None (no depth topic).
        depth_frame_id, depth_topic: the depth image's header frame (default: the colour one) and topic name.
        garbled: frame indices whose compressed colour bytes are replaced by garbage (undecodable images).
        extra_topics: also write an IMU-like unrelated topic and an unregistered infrared image, so topic choice
            by type is exercised.
    """
    typestore = _typestore(ros1)
    types = typestore.types
    ser = typestore.serialize_ros1 if ros1 else typestore.serialize_cdr
    if ros1:
        from rosbags.rosbag1 import Writer

        writer = Writer(path)
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer

        writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
    img_type = "sensor_msgs/msg/CompressedImage" if colour in ("jpeg", "png") else "sensor_msgs/msg/Image"
    with writer:
        # Connection order is deliberate: depth first, colour after, so "the first image topic" is wrong.
        c_depth = writer.add_connection(depth_topic, "sensor_msgs/msg/Image", typestore=typestore) if depth else None
        c_ir = writer.add_connection("/camera/infra1/image_rect_raw", "sensor_msgs/msg/Image",
                                     typestore=typestore) if extra_topics else None
        topic = "/camera/color/image_raw" + ("/compressed" if img_type.endswith("CompressedImage") else "")
        c_img = writer.add_connection(topic, img_type, typestore=typestore) if colour else None
        c_info = writer.add_connection("/camera/color/camera_info", "sensor_msgs/msg/CameraInfo",
                                       typestore=typestore) if info is not None else None
        for i, f in enumerate(frames):
            t = int(f.t_ns)
            header = _header(types, t, frame_id, ros1, i)
            if c_info is not None and i == 0:
                writer.write(c_info, t - 1, ser(camera_info_msg(types, header, info, ros1),
                                                "sensor_msgs/msg/CameraInfo"))
            if c_depth is not None and f.depth is not None:
                d = f.depth
                arr = np.round(d * 1000).astype(np.uint16) if depth == "16UC1" else d.astype(np.float32)
                d_header = _header(types, t, depth_frame_id or frame_id, ros1, i)
                writer.write(c_depth, t, ser(image_msg(types, d_header, arr, depth), "sensor_msgs/msg/Image"))
            if c_ir is not None:
                ir_header = _header(types, t, "camera_infra1_optical_frame", ros1, i)
                grey = f.image[..., 1]
                writer.write(c_ir, t, ser(image_msg(types, ir_header, grey, "mono8"), "sensor_msgs/msg/Image"))
            if c_img is None:
                continue
            if img_type.endswith("CompressedImage"):
                ok, buf = cv2.imencode("." + colour.replace("jpeg", "jpg"), cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
                assert ok
                if i in garbled:
                    buf = np.frombuffer(b"not an image at all", np.uint8)
                msg = types["sensor_msgs/msg/CompressedImage"](header=header, format=colour, data=buf.reshape(-1))
            else:
                arr = f.image if colour == "rgb8" else f.image[..., ::-1]
                msg = image_msg(types, header, arr, colour)
            writer.write(c_img, t + 1, ser(msg, img_type))  # log time just after the depth: depth comes first
    return path
