"""The ROS-independent half of the ROS node's messages: stamps, output fields, configuration and the ~path.

The ROS 1 (rospy) and ROS 2 (rclpy) adapters only move messages in and out; everything that can be
wrong about the numbers lives here and is unit-tested without ROS. Incoming Image / CompressedImage /
CameraInfo messages are decoded by `recon.datasets.ros_msgs`, the codec the bag reader uses too (ROS 1 and
ROS 2 field names, every image encoding). The reconstruction itself runs in the shared node pipeline
(`recon.nodes.ros.frontend`).

Conventions (DESIGN.md §3): images become uint8 HxWx3 RGB, time is integer nanoseconds, poses are
`T_world_cam` and the map frame *is* the backend's world frame (OpenCV axes of the first camera, so
z is forward, not up). Nothing here depends on cv_bridge.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from recon.backends.options import parse_option_value
from recon.datasets.ros_msgs import NS_PER_S
from recon.errors import ConfigError, ProtocolError
from recon.geometry.transforms import rotmat_to_quat_xyzw
from recon.nodes.ros.map_frames import tf_chain
from recon.sinks.points import PointSelection, result_points_hw3, select_points
from recon.types import FrameResult

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


def cloud_from_result(result: FrameResult, stride: int = 1, min_confidence: float = 0.0,
                      max_points: int = 0) -> Cloud | None:
    """World-frame coloured points of one result, or None when the backend gave no geometry.

    Points come from `points_world`, else from `depth` with `K` and the pose; colours from the result's image
    (grey without one). Non-finite points and points below `min_confidence` are dropped; `stride` subsamples
    the grid and `max_points` (0: no cap) thins the rest evenly. The selection and colour resampling are
    recon.sinks.points.select_points, the PLY and Rerun outputs' own.
    """
    if result.points_world is not None and np.ndim(result.points_world) == 2:
        result = replace(result, points_world=np.asarray(result.points_world)[None])
    if result_points_hw3(result) is None:
        return None
    selection = PointSelection(stride=max(1, int(stride)), max_points=max_points if max_points > 0 else None,
                               min_confidence=min_confidence if min_confidence > 0 else None)
    pts, rgb = select_points(result, selection)
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
        backend: registered backend name (`recon.backends`) the in-process node builds; with `node`, the external
            node's backend runs and this is only the name /diagnostics shows.
        backend_options: keyword options for the backend factory (in-process node).
        plugins: modules imported before the backend is built, so they can register more backends.
        image_topic: sensor_msgs/Image topic, or CompressedImage when `compressed` (then the topic is used as
            given, e.g. `/camera/image_raw/compressed`).
        camera_info_topic: sensor_msgs/CameraInfo topic; empty: no intrinsics (the backend assumes them).
        compressed: subscribe to CompressedImage instead of Image.
        map_frame: frame id of poses, path, cloud, and tf parent (the backend's world frame).
        odom_frame: with a loop-closing backend (`recon.map`, `T_map_odom`), tf is map -> odom (the newest
            correction, REP 105) and odom -> camera; ~pose and ~path stay in the map frame (corrected).
        camera_frame: tf child frame; empty: the image header's frame_id (or "camera" if that is empty).
        stream_id: the stream's name in the reconstruction node (and in its checkpoints).
        queue_size: images waiting for the pipeline; when full the oldest is dropped and counted.
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
            camera before the backend (the camera node's recon.calib.undistort.FrameUndistorter).
        node: ROUTER endpoint of an external reconstruction node (`recon node recon --bind ...`); empty: the
            node runs in this process over inproc://, with `backend`, `backend_options` and `state_dir`.
        node_publish, node_control: that node's result and control endpoints; empty: `node`'s port + 1 and + 2
            (`recon node recon`'s defaults).
        state_dir: in-process node: checkpoint folder (empty: none); a restarted ROS node restores its stream
            from it and continues in the same map frame.
        checkpoint_every: in-process node: frames between checkpoints.
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
    node: str = ""
    node_publish: str = ""
    node_control: str = ""
    state_dir: str = ""
    checkpoint_every: int = 30

    def __post_init__(self) -> None:
        if not self.backend:
            raise ConfigError("backend must be a registered backend name, got an empty string")
        if not self.image_topic:
            raise ConfigError("image_topic must not be empty")
        if not self.map_frame:
            raise ConfigError("map_frame must not be empty")
        for name in ("queue_size", "cloud_stride", "max_path", "checkpoint_every"):
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
        for name in (f.name for f in fields(self) if f.name != "backend_options"):  # every field is a parameter
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


DIAGNOSTICS_PERIOD_S = 1.0  # /diagnostics at 1 Hz, the rate diagnostic_aggregator expects


class ResultPublisher:
    """What the ROS 1 node and the ROS 2 adapter publish per result, written once over their message classes.

    A subclass provides `front` (recon.nodes.ros.frontend.RosFrontEnd), `_msgs` (message classes by name:
    PoseStamped, TransformStamped, TFMessage, Path, PointCloud2, PointField), `_stamp(t_ns)` (a ROS time of its
    flavour) and the publishers `pose_pub`, `tf_pub`, `path_pub`, `points_pub`.
    """

    front: Any
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
        """A PoseStamped in the map frame (path entries; cached by the front end's PathBuffer)."""
        p = self._msgs["PoseStamped"]()
        p.header.stamp, p.header.frame_id = self._stamp(t_ns), self.front.config.map_frame
        fill_pose(p.pose, T_world_cam)
        return p

    def publish(self, out: Output) -> None:
        """Publish one result: pose, tf, path, and the cloud when there is one."""
        m, cfg = self._msgs, self.front.config
        stamp = self._stamp(out.t_ns)
        pose = m["PoseStamped"]()
        pose.header.stamp, pose.header.frame_id = stamp, cfg.map_frame
        fill_pose(pose.pose, out.result.T_world_cam)
        self.pose_pub.publish(pose)

        links = [(cfg.map_frame, out.camera_frame, out.result.T_world_cam)]
        if out.result.T_map_odom is not None:  # REP 105: map -> odom jumps when a loop closes, odom -> camera not
            T_map_odom, T_odom_cam = tf_chain(out.result.T_world_cam, out.result.T_map_odom)
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
        path.poses = self.front.path.messages(self._pose_msg)
        self.path_pub.publish(path)

        if out.cloud is not None:
            cloud = m["PointCloud2"]()
            cloud.header.stamp, cloud.header.frame_id = stamp, cfg.map_frame
            fill_cloud(cloud, out.cloud, m["PointField"])
            self.points_pub.publish(cloud)
        self.front.latency.add_since(out.t_ns)
        self.publish_diagnostics()

    def publish_diagnostics(self, force: bool = False) -> None:
        """The node's status on /diagnostics (counters, capture-to-publish latency p50/p95/p99), rate-limited."""
        now = time.monotonic()
        if self.diagnostics_pub is None or (not force and now - self._last_diagnostics < DIAGNOSTICS_PERIOD_S):
            return
        self._last_diagnostics = now
        m = self._msgs
        status = m["DiagnosticStatus"]()
        status.level, status.name, status.hardware_id = 0, f"recon: {self.front.config.backend}", "recon"
        summary = self.front.latency.summary()
        status.message = (f"capture-to-publish p95 {summary['p95']:.1f} ms" if summary.get("n") else "no results yet")
        status.values = [m["KeyValue"](key=k, value=v) for k, v in self.front.diagnostic_values()]
        array = m["DiagnosticArray"]()
        array.header.stamp = self._stamp(time.time_ns())
        array.status = [status]
        self.diagnostics_pub.publish(array)
