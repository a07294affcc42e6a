"""The ROS-independent half of the ROS node: stamps, output fields and the node's state.

The ROS 1 (rospy) and ROS 2 (rclpy) adapters only move messages in and out; everything that can be
wrong about the numbers lives here and is unit-tested without ROS. Incoming Image / CompressedImage /
CameraInfo messages are decoded by `recon.datasets.ros_msgs`, the codec the bag reader uses too (ROS 1 and
ROS 2 field names, every image encoding), re-exported here.

Conventions (DESIGN.md §3): images become uint8 HxWx3 RGB, time is integer nanoseconds, poses are
`T_world_cam` and the map frame *is* the backend's world frame (OpenCV axes of the first camera, so
z is forward, not up). Nothing here depends on cv_bridge.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from recon.backends.base import Backend
from recon.backends.options import parse_option_value  # noqa: F401 - re-exported for the adapters
from recon.calib.undistort import FrameUndistorter
from recon.datasets.ros_msgs import (  # noqa: F401 - the codec shared with the bag reader, re-exported
    DEPTH_ENCODINGS,
    NS_PER_S,
    RAW_ENCODINGS,
    camera_info_from_msg,
    decode_compressed_image,
    decode_depth,
    decode_depth_image,
    decode_raw_image,
    stamp_to_ns,
)
from recon.datasets.ros_msgs import decode_image as image_msg_to_rgb  # noqa: F401
from recon.errors import ConfigError, ProtocolError, ReconError
from recon.geometry.transforms import rotmat_to_quat_xyzw
from recon.nodes.latency import LatencyWindow
from recon.nodes.ros.map_frames import tf_chain
from recon.sinks.points import PointSelection, resample_nearest, result_points_hw3, select_points
from recon.types import CameraInfo, Frame, FrameResult
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)

# sensor_msgs/PointField datatype codes (identical in ROS 1 and ROS 2).
POINTFIELD_FLOAT32 = 7

# The point cloud layout we publish: x, y, z float32 and the PCL-style packed rgb (0x00RRGGBB stored in a
# 4-byte field declared FLOAT32, which is what rviz and pcl_ros expect).
CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
CLOUD_FIELDS: tuple[tuple[str, int, int, int], ...] = (
    ("x", 0, POINTFIELD_FLOAT32, 1),
    ("y", 4, POINTFIELD_FLOAT32, 1),
    ("z", 8, POINTFIELD_FLOAT32, 1),
    ("rgb", 12, POINTFIELD_FLOAT32, 1),
)


# --------------------------------------------------------------------------------------------- time


def ns_to_sec_nsec(t_ns: int) -> tuple[int, int]:
    """Split nanoseconds into (seconds, nanoseconds) as both ROS stamp types store them."""
    if t_ns < 0:
        raise ConfigError(f"ROS stamps cannot be negative, got t_ns={t_ns}")
    return divmod(int(t_ns), NS_PER_S)


# ----------------------------------------------------------------------------------------- outputs


def pose_fields(T_world_cam: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
    """(position xyz, orientation xyzw) of a camera-to-world pose, as geometry_msgs/Pose stores them."""
    T = np.asarray(T_world_cam, dtype=np.float64)
    t = T[:3, 3]
    q = rotmat_to_quat_xyzw(T[:3, :3])
    return (float(t[0]), float(t[1]), float(t[2])), (float(q[0]), float(q[1]), float(q[2]), float(q[3]))


def fill_pose(pose_msg: Any, T_world_cam: np.ndarray) -> None:
    """Write a pose into a geometry_msgs/Pose (ROS 1 or 2)."""
    (x, y, z), (qx, qy, qz, qw) = pose_fields(T_world_cam)
    pose_msg.position.x, pose_msg.position.y, pose_msg.position.z = x, y, z
    pose_msg.orientation.x, pose_msg.orientation.y, pose_msg.orientation.z, pose_msg.orientation.w = qx, qy, qz, qw


def fill_transform(transform_msg: Any, T_world_cam: np.ndarray) -> None:
    """Write a pose into a geometry_msgs/Transform (tf: parent map, child camera)."""
    (x, y, z), (qx, qy, qz, qw) = pose_fields(T_world_cam)
    tr, rot = transform_msg.translation, transform_msg.rotation
    tr.x, tr.y, tr.z = x, y, z
    rot.x, rot.y, rot.z, rot.w = qx, qy, qz, qw


@dataclass
class Cloud:
    """A PointCloud2 body in our fixed layout (`CLOUD_FIELDS`), one unorganised row of points."""

    points: np.ndarray  # structured CLOUD_DTYPE, n

    @property
    def width(self) -> int:
        return int(self.points.shape[0])

    @property
    def point_step(self) -> int:
        return CLOUD_DTYPE.itemsize

    @property
    def data(self) -> bytes:
        return self.points.tobytes()


def pack_rgb(rgb_n3: np.ndarray) -> np.ndarray:
    """uint32 0x00RRGGBB per point, the PCL packing rviz decodes."""
    c = np.asarray(rgb_n3, dtype=np.uint32)
    return (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]


def unpack_rgb(packed_n: np.ndarray) -> np.ndarray:
    """Inverse of `pack_rgb` (n x 3 uint8)."""
    p = np.asarray(packed_n, dtype=np.uint32)
    return np.stack([(p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF], axis=1).astype(np.uint8)


def cloud_from_result(result: FrameResult, image: np.ndarray | None = None, stride: int = 1,
                      min_confidence: float = 0.0, max_points: int = 0) -> Cloud | None:
    """World-frame coloured points of one result, or None when the backend gave no geometry.

    Points come from `points_world`, else from `depth` with `K` and the pose. Colours come from the
    result's image, else from `image` (the input frame), resampled to the point grid; grey otherwise.
    Non-finite points and points below `min_confidence` are dropped; `stride` subsamples the grid and
    `max_points` (0: no cap) thins the rest evenly. The selection is recon.sinks.points.select_points, the same
    as the PLY and Rerun outputs'.
    """
    if result.points_world is not None and np.ndim(result.points_world) == 2:
        result = replace(result, points_world=np.asarray(result.points_world)[None])
    if result.image is None and image is not None and np.ndim(image) == 3:
        result = replace(result, image=np.asarray(image, dtype=np.uint8)[..., :3])
    if result_points_hw3(result) is None:
        return None
    selection = PointSelection(stride=max(1, int(stride)), max_points=max_points if max_points > 0 else None,
                               min_confidence=min_confidence if min_confidence > 0 else None)
    pts, rgb = select_points(result, selection)  # the selection and colour resampling of the PLY and Rerun sinks
    if rgb is None:
        rgb = np.full((pts.shape[0], 3), 128, dtype=np.uint8)
    out = np.empty(pts.shape[0], dtype=CLOUD_DTYPE)
    out["x"], out["y"], out["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    out["rgb"] = pack_rgb(rgb)
    return Cloud(out)


def fill_cloud(cloud_msg: Any, cloud: Cloud, point_field: Callable[..., Any]) -> None:
    """Write a Cloud into a sensor_msgs/PointCloud2; `point_field` is that ROS version's PointField class."""
    cloud_msg.height = 1
    cloud_msg.width = cloud.width
    cloud_msg.fields = [point_field(name=n, offset=o, datatype=d, count=c) for n, o, d, c in CLOUD_FIELDS]
    cloud_msg.is_bigendian = False
    cloud_msg.point_step = cloud.point_step
    cloud_msg.row_step = cloud.point_step * cloud.width
    cloud_msg.data = cloud.data
    cloud_msg.is_dense = True


def cloud_to_array(fields: list[Any], point_step: int, width: int, height: int, data: bytes) -> np.ndarray:
    """Structured array from a PointCloud2 in our layout (for tests and tools; checks the layout)."""
    got = tuple((f.name, int(f.offset), int(f.datatype), int(f.count)) for f in fields)
    if got != CLOUD_FIELDS or point_step != CLOUD_DTYPE.itemsize:
        raise ProtocolError(f"point cloud layout {got} step {point_step} is not recon's {CLOUD_FIELDS}")
    return np.frombuffer(bytes(data), dtype=CLOUD_DTYPE, count=width * height)


# ------------------------------------------------------------------------------------------ config


@dataclass
class RosNodeConfig:
    """Everything the ROS node reads from its private parameters (`~name`), CLI flags giving defaults.

    Attributes:
        backend: registered backend name (`recon.backends`).
        backend_options: keyword options for the backend factory.
        plugins: modules imported before the backend is built, so they can register more backends.
        image_topic: sensor_msgs/Image topic, or CompressedImage when `compressed` (then the topic is used as
            given, e.g. `/camera/image_raw/compressed`).
        camera_info_topic: sensor_msgs/CameraInfo topic; empty: no intrinsics (the backend assumes them).
        compressed: subscribe to CompressedImage instead of Image.
        map_frame: frame id of poses, path, cloud, and tf parent (the backend's world frame).
        odom_frame: with a loop-closing backend (`recon.map`, `T_map_odom`), tf is map -> odom (the newest
            correction, REP 105) and odom -> camera; ~pose and ~path stay in the map frame (corrected).
        camera_frame: tf child frame; empty: the image header's frame_id (or "camera" if that is empty).
        stream_id: stream name handed to the backend.
        queue_size: frames waiting for the backend; the newest wins, older ones are dropped and counted.
        cloud_stride: publish every n-th point of the point grid in both directions.
        min_confidence: drop points below this confidence (0: keep all).
        max_points: cap on points per cloud (0: no cap).
        max_path: poses kept in ~path (the oldest are dropped beyond it).
        wait_camera_info: drop images until the first camera_info arrives (when a topic is set).
        depth_topic: optional depth Image (16UC1 / mono16 scaled by `depth_scale`, or 32FC1 metres) registered
            to the colour image; each colour image takes the depth with the nearest stamp within `depth_slop`.
        depth_scale: metres per unit of 16-bit depth (0.001 for millimetres).
        depth_slop: seconds between colour and depth stamps still considered the same capture.
        depth_wait: seconds a colour image waits for its depth before going on without it.
        undistort: remap images (and depth) of a camera whose CameraInfo has lens distortion to its pinhole
            camera before the backend (recon.calib.undistort.FrameUndistorter, as the camera node does).
    """

    backend: str = "geometric"
    backend_options: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    image_topic: str = "image"
    camera_info_topic: str = "camera_info"
    compressed: bool = False
    map_frame: str = "map"
    odom_frame: str = "odom"
    camera_frame: str = ""
    stream_id: str = "ros"
    queue_size: int = 2
    cloud_stride: int = 1
    min_confidence: float = 0.0
    max_points: int = 200_000
    max_path: int = 10_000
    wait_camera_info: bool = True
    depth_topic: str = ""
    depth_scale: float = 0.001
    depth_slop: float = 0.02
    depth_wait: float = 0.2
    undistort: bool = True

    def __post_init__(self) -> None:
        if not self.backend:
            raise ConfigError("backend must be a registered backend name, got an empty string")
        if not self.image_topic:
            raise ConfigError("image_topic must not be empty")
        if not self.map_frame:
            raise ConfigError("map_frame must not be empty")
        for name in ("queue_size", "cloud_stride", "max_path"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.depth_scale <= 0 or self.depth_slop < 0 or self.depth_wait < 0:
            raise ConfigError(f"depth_scale must be > 0 and depth_slop, depth_wait >= 0, got {self.depth_scale!r}, "
                              f"{self.depth_slop!r}, {self.depth_wait!r}")
        if int(self.max_points) < 0:
            raise ConfigError(f"max_points must be >= 0, got {self.max_points!r}")
        if not isinstance(self.backend_options, Mapping):
            raise ConfigError(f"backend_options must be a mapping, got {self.backend_options!r}")
        self.backend_options = dict(self.backend_options)
        if isinstance(self.plugins, str):
            self.plugins = tuple(p for p in self.plugins.replace(",", " ").split() if p)
        self.plugins = tuple(self.plugins)

    def with_params(self, get_param: Callable[[str, Any], Any]) -> RosNodeConfig:
        """A copy overridden by the parameter server: `get_param(name, default)` reads `~name`.

        `~backend_options` (a dict) is merged over the CLI's options, so a launch file can set one key.
        """
        changes: dict[str, Any] = {}
        for name in ("backend", "image_topic", "camera_info_topic", "compressed", "map_frame", "odom_frame",
                     "camera_frame",
                     "stream_id", "queue_size", "cloud_stride", "min_confidence", "max_points", "max_path",
                     "wait_camera_info", "plugins", "depth_topic", "depth_scale", "depth_slop", "depth_wait",
                     "undistort"):
            default = getattr(self, name)
            value = get_param(name, default)
            if value is not default:
                changes[name] = _coerce(name, value, default)
        opts = get_param("backend_options", None)
        if opts is not None:
            if not isinstance(opts, Mapping):
                raise ConfigError(f"~backend_options must be a dict, got {opts!r}")
            changes["backend_options"] = {**self.backend_options, **opts}
        return replace(self, **changes)


def load_plugins(modules: tuple[str, ...]) -> None:
    """Import plugin modules, which register extra backends with `recon.backends.register`."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"plugin module {name!r} cannot be imported: {e}") from e
        logger.info("loaded plugin %s", name)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Parameter values to the type of the field's default, with an error naming the parameter."""
    if isinstance(default, tuple):
        return tuple(value.replace(",", " ").split()) if isinstance(value, str) else tuple(value)
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return parse_option_value(value) is True
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"parameter ~{name} must be a {type(default).__name__}, got {value!r}") from e


# ------------------------------------------------------------------------------------ node state


@dataclass
class Output:
    """What an adapter publishes for one backend result: pose, tf and path entry, and maybe a cloud."""

    result: FrameResult
    t_ns: int
    camera_frame: str
    cloud: Cloud | None
    T_map_odom: np.ndarray | None = None  # the map layer's correction when the backend closes loops


class LatestQueue:
    """Bounded hand-over from subscriber callbacks to the worker: when full the oldest item is dropped.

    Live cameras must not make the backend fall further and further behind (DESIGN.md §6); drops are counted.
    """

    def __init__(self, maxlen: int) -> None:
        self._items: deque[Any] = deque()
        self._maxlen = maxlen
        self._cond = threading.Condition()
        self.dropped = 0
        self._closed = False

    def put(self, item: Any) -> bool:
        """Queue `item`; returns False when an older item had to be dropped to make room."""
        with self._cond:
            dropped = len(self._items) >= self._maxlen
            if dropped:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()
            return not dropped

    def get(self, timeout: float) -> Any | None:
        """Oldest queued item, or None after `timeout` seconds or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class PathBuffer:
    """The ~path poses in seq order; a revised result (same seq) replaces its entry; bounded length.

    The whole path is re-published with every result, so each entry's message is built once and cached.
    """

    def __init__(self, max_len: int) -> None:
        self._poses: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()
        self._msgs: dict[int, Any] = {}
        self._max_len = max_len

    def add(self, result: FrameResult) -> None:
        self._poses[result.seq] = (result.t_ns, result.T_world_cam)
        self._msgs.pop(result.seq, None)
        if len(self._poses) > 1 and result.seq < next(reversed(self._poses)):
            self._poses = OrderedDict(sorted(self._poses.items()))
        while len(self._poses) > self._max_len:
            seq, _ = self._poses.popitem(last=False)
            self._msgs.pop(seq, None)

    def poses(self) -> list[tuple[int, np.ndarray]]:
        """(t_ns, T_world_cam) per pose, oldest first."""
        return list(self._poses.values())

    def messages(self, make: Callable[[int, np.ndarray], Any]) -> list[Any]:
        """The poses as adapter messages, `make(t_ns, T_world_cam)` called once per entry (and per revision)."""
        out = []
        for seq, (t_ns, T) in self._poses.items():
            msg = self._msgs.get(seq)
            if msg is None:
                msg = self._msgs[seq] = make(t_ns, T)
            out.append(msg)
        return out

    def __len__(self) -> int:
        return len(self._poses)


class RosNodeCore:
    """The node's state between messages: intrinsics, sequence numbers, backend, path and counters.

    Adapters call `on_camera_info` and `on_image` from callbacks (cheap: they only queue), and `work` from
    their worker loop, then publish the returned Outputs. Everything here is thread-safe in that pattern.
    """

    def __init__(self, config: RosNodeConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.queue = LatestQueue(config.queue_size)
        self.path = PathBuffer(config.max_path)
        self.camera_info: CameraInfo | None = None
        self.faults = WarnOnce(logger)
        self.frames_in = 0
        self.results_out = 0
        self.waiting_for_info = 0
        self.resets = 0
        self.undistort = FrameUndistorter("recon ROS node", config.undistort)
        self.latency = LatencyWindow()  # capture (header stamp) to publish, what /diagnostics reports
        self._seq = 0
        self._size: tuple[int, int] | None = None
        self._images: OrderedDict[int, np.ndarray] = OrderedDict()  # recent inputs, for colours of late results
        self._frame_ids: dict[int, str] = {}
        self._depths: OrderedDict[int, Any] = OrderedDict()  # stamp ns -> depth message, newest last
        self._depth_cond = threading.Condition()

    def on_camera_info(self, msg: Any) -> None:
        """Remember the newest intrinsics (a bad message is counted and ignored)."""
        try:
            self.camera_info = camera_info_from_msg(msg)
        except (ProtocolError, ConfigError) as e:
            self.faults("camera_info", "ignoring camera_info: %s", e)

    def on_depth(self, msg: Any) -> None:
        """Keep recent depth messages by stamp (decoded only when a colour image claims one)."""
        with self._depth_cond:
            self._depths[stamp_to_ns(msg.header.stamp)] = msg
            while len(self._depths) > 30:
                self._depths.popitem(last=False)
            self._depth_cond.notify_all()

    def _take_depth(self, t_ns: int, shape: tuple[int, int]) -> np.ndarray | None:
        """Depth (metres, resized to `shape` if needed) for the colour image stamped `t_ns`, waiting briefly."""
        slop_ns = int(self.config.depth_slop * NS_PER_S)

        def nearest() -> int | None:
            best = min(self._depths, key=lambda t: abs(t - t_ns), default=None)
            return best if best is not None and abs(best - t_ns) <= slop_ns else None

        with self._depth_cond:
            self._depth_cond.wait_for(lambda: nearest() is not None, timeout=self.config.depth_wait)
            key = nearest()
            if key is None:
                self.faults("no_depth", "no depth within %.3f s of a colour image on %s; going on without depth",
                            self.config.depth_slop, self.config.depth_topic)
                return None
            msg = self._depths.pop(key)
        try:
            depth = decode_depth(msg, self.config.depth_scale)
        except ProtocolError as e:
            self.faults("bad_depth", "ignoring a depth image: %s", e)
            return None
        if depth.shape != shape:
            self.faults("depth_size", "depth %s differs from the colour image %s: resampled (use depth registered "
                        "to the colour camera)", depth.shape, shape)
            depth = resample_nearest(depth, *shape)
        return depth

    def on_image(self, msg: Any) -> None:
        """Queue an image message for the worker; the newest wins when the backend is busy."""
        if not self.queue.put(msg):
            self.faults("dropped", "backend is slower than the image topic; dropping the oldest queued images")

    def frame_from_msg(self, msg: Any) -> Frame | None:
        """A Frame (next seq, header stamp, intrinsics scaled to the image) or None if it cannot be used yet."""
        if self.config.camera_info_topic and self.config.wait_camera_info and self.camera_info is None:
            self.waiting_for_info += 1
            self.faults("no_camera_info", "dropping images until the first message on %s arrives",
                        self.config.camera_info_topic)
            return None
        try:
            rgb = image_msg_to_rgb(msg)
        except ProtocolError as e:
            self.faults("bad_image", "dropping an image: %s", e)
            return None
        K = None
        info = self.camera_info
        if info is not None:
            h, w = rgb.shape[:2]
            K = (info if (info.width, info.height) == (w, h) else info.scaled(w, h)).K
        t_ns = stamp_to_ns(msg.header.stamp)
        depth = self._take_depth(t_ns, rgb.shape[:2]) if self.config.depth_topic else None
        seq = self._seq
        self._seq += 1
        frame = Frame(self.config.stream_id, seq, t_ns, rgb, K, depth=depth,
                      meta={"frame_id": str(msg.header.frame_id)})
        self.undistort.apply(frame, info)
        return frame

    def process(self, frame: Frame) -> list[Output]:
        """Run the backend on one frame and turn its results (possibly for earlier frames) into Outputs."""
        self.frames_in += 1
        self._images[frame.seq] = frame.image
        self._frame_ids[frame.seq] = str(frame.meta.get("frame_id", ""))
        while len(self._images) > 64:  # lagging backends emit late; 64 frames of colour is plenty
            old, _ = self._images.popitem(last=False)
            self._frame_ids.pop(old, None)
        outs: list[Output] = []
        size = (frame.width, frame.height)
        if self._size is not None and size != self._size:
            # Backends hold one resolution per session (DESIGN.md §4): finish the old map, start a new one.
            logger.warning("image size changed from %dx%d to %dx%d at seq %d: flushing and resetting the backend "
                           "(the map and ~path start again)", *self._size, *size, frame.seq)
            outs = self.flush()
            self.backend.reset()
            self.path = PathBuffer(self.config.max_path)
            self.resets += 1
        self._size = size
        try:
            results = self.backend.step(frame)
        except ReconError as e:  # a refused frame must not take the node down
            self.faults("backend", "backend %s refused frame %d: %s", self.config.backend, frame.seq, e)
            return outs
        return outs + self._outputs(results)

    def flush(self) -> list[Output]:
        """Results still pending in the backend at the end of the stream."""
        return self._outputs(self.backend.flush())

    def work(self, timeout: float = 0.1) -> list[Output]:
        """Take one queued image (waiting up to `timeout` s) and process it."""
        msg = self.queue.get(timeout)
        if msg is None:
            return []
        frame = self.frame_from_msg(msg)
        return self.process(frame) if frame is not None else []

    def drain(self) -> list[Output]:
        """Process every image still queued (clean shutdown: nothing received is silently lost)."""
        outs: list[Output] = []
        while (msg := self.queue.get(0.0)) is not None:
            frame = self.frame_from_msg(msg)
            if frame is not None:
                outs += self.process(frame)
        return outs

    def diagnostic_values(self) -> list[tuple[str, str]]:
        """Key/value pairs of the node's /diagnostics status: counters and the capture-to-publish latency."""
        values = [("backend", self.config.backend), ("frames_in", str(self.frames_in)),
                  ("results_out", str(self.results_out)), ("resets", str(self.resets)),
                  ("waiting_for_camera_info", str(self.waiting_for_info))]
        return values + [(f"latency_ms_{k}" if k != "n" else "latency_samples", str(v))
                         for k, v in self.latency.summary().items()]

    def camera_frame_for(self, seq: int) -> str:
        """The tf child frame: the configured one, else the image header's frame_id, else "camera"."""
        return self.config.camera_frame or self._frame_ids.get(seq, "") or "camera"

    def _outputs(self, results: list[FrameResult]) -> list[Output]:
        outs = []
        for r in results:
            self.results_out += 1
            self.path.add(r)
            cloud = cloud_from_result(r, self._images.get(r.seq), self.config.cloud_stride,
                                      self.config.min_confidence, self.config.max_points)
            T_map_odom = getattr(self.backend, "T_map_odom", None)  # recon.map.MappedBackend
            outs.append(Output(r, r.t_ns, self.camera_frame_for(r.seq), cloud,
                               None if T_map_odom is None else np.array(T_map_odom, np.float64)))
        return outs

    def serve(self, publish: Callable[[Output], None], stop: threading.Event, ros_ok: Callable[[], bool],
              drain_s: float = 0.5) -> None:
        """The adapters' main loop: run the backend on queued images and publish, until `stop` or ROS ends.

        On `stop` (our SIGINT/SIGTERM handler) the images already queued are processed and the backend is
        flushed, and those last results are published while ROS is still up; `drain_s` then lets the
        publishers' send threads empty. When ROS itself went down first (`rosnode kill`), nothing can be sent.
        """
        while not stop.is_set() and ros_ok():
            for out in self.work(timeout=0.1):
                publish(out)
        if ros_ok():
            pending = self.drain() + self.flush()
            for out in pending:
                publish(out)
            if pending:
                time.sleep(drain_s)
        logger.info("recon ROS node stopping: %d frames in, %d results out, %d images dropped, faults %s",
                    self.frames_in, self.results_out, self.queue.dropped, self.faults.counts)


DIAGNOSTICS_PERIOD_S = 1.0  # /diagnostics at 1 Hz, the rate diagnostic_aggregator expects


class ResultPublisher:
    """What the ROS 1 node and the ROS 2 adapter publish per result, written once over their message classes.

    A subclass provides `core` (RosNodeCore), `_msgs` (message classes by name: PoseStamped, TransformStamped,
    TFMessage, Path, PointCloud2, PointField), `_stamp(t_ns)` (a ROS time of its flavour) and the publishers
    `pose_pub`, `tf_pub`, `path_pub`, `points_pub`.
    """

    core: Any
    _msgs: dict[str, Any]
    pose_pub: Any
    tf_pub: Any
    path_pub: Any
    points_pub: Any
    diagnostics_pub: Any = None  # /diagnostics (DiagnosticArray in _msgs), at most DIAGNOSTICS_PERIOD_S apart
    _last_diagnostics = 0.0

    def _stamp(self, t_ns: int) -> Any:
        raise NotImplementedError

    def _pose_msg(self, t_ns: int, T_world_cam: Any) -> Any:
        """A PoseStamped in the map frame (path entries; cached by the core's PathBuffer)."""
        p = self._msgs["PoseStamped"]()
        p.header.stamp, p.header.frame_id = self._stamp(t_ns), self.core.config.map_frame
        fill_pose(p.pose, T_world_cam)
        return p

    def publish(self, out: Output) -> None:
        """Publish one result: pose, tf, path, and the cloud when there is one."""
        m, cfg = self._msgs, self.core.config
        stamp = self._stamp(out.t_ns)
        pose = m["PoseStamped"]()
        pose.header.stamp, pose.header.frame_id = stamp, cfg.map_frame
        fill_pose(pose.pose, out.result.T_world_cam)
        self.pose_pub.publish(pose)

        links = [(cfg.map_frame, out.camera_frame, out.result.T_world_cam)]
        if out.T_map_odom is not None:  # REP 105: map -> odom jumps when a loop closes, odom -> camera does not
            T_map_odom, T_odom_cam = tf_chain(out.result.T_world_cam, out.T_map_odom)
            links = [(cfg.map_frame, cfg.odom_frame, T_map_odom), (cfg.odom_frame, out.camera_frame, T_odom_cam)]
        tfs = []
        for parent, child, T in links:
            tf = m["TransformStamped"]()
            tf.header.stamp, tf.header.frame_id, tf.child_frame_id = stamp, parent, child
            fill_transform(tf.transform, T)
            tfs.append(tf)
        self.tf_pub.publish(m["TFMessage"](transforms=tfs))

        path = m["Path"]()
        path.header.stamp, path.header.frame_id = stamp, cfg.map_frame
        path.poses = self.core.path.messages(self._pose_msg)
        self.path_pub.publish(path)

        if out.cloud is not None:
            cloud = m["PointCloud2"]()
            cloud.header.stamp, cloud.header.frame_id = stamp, cfg.map_frame
            fill_cloud(cloud, out.cloud, m["PointField"])
            self.points_pub.publish(cloud)
        self.core.latency.add_since(out.t_ns)
        self.publish_diagnostics()

    def publish_diagnostics(self, force: bool = False) -> None:
        """The node's status on /diagnostics (counters, capture-to-publish latency p50/p95/p99), rate-limited."""
        now = time.monotonic()
        if self.diagnostics_pub is None or (not force and now - self._last_diagnostics < DIAGNOSTICS_PERIOD_S):
            return
        self._last_diagnostics = now
        m = self._msgs
        status = m["DiagnosticStatus"]()
        status.level, status.name, status.hardware_id = 0, f"recon: {self.core.config.backend}", "recon"
        summary = self.core.latency.summary()
        status.message = (f"capture-to-publish p95 {summary['p95']:.1f} ms" if summary.get("n") else "no results yet")
        status.values = [m["KeyValue"](key=k, value=v) for k, v in self.core.diagnostic_values()]
        array = m["DiagnosticArray"]()
        array.header.stamp = self._stamp(time.time_ns())
        array.status = [status]
        self.diagnostics_pub.publish(array)
