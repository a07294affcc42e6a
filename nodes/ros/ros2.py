"""The ROS 2 (rclpy) adapter: the same front end and topics as the ROS 1 node, for a sourced ROS 2 install.

Imported only by `recon node ros --ros 2` (or `auto` when rospy is absent and rclpy exists); nothing else
in recon imports it, so rclpy stays optional. Differences from ROS 1, all at this boundary:
- parameters are declared (ROS 2 has no undeclared parameters); `backend_options` is a string
  "key=value,key=value" because ROS 2 parameters cannot be dicts, and `plugins` a comma-separated string;
- images and camera_info are subscribed with the sensor-data QoS (best effort), which also receives from
  reliable publishers; tf goes to `/tf` like tf2_ros's TransformBroadcaster;
- private topics are spelled `~/pose` and stamps are `builtin_interfaces/Time(sec, nanosec)`.

Example (with /opt/ros/<distro>/setup.bash sourced in the venv's shell):
    recon node ros --ros 2 --image-topic /camera/image_raw -- --ros-args -p map_frame:=odom
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from recon.backends.options import parse_backend_options
from recon.errors import MissingDependencyError
from recon.nodes.cli_util import ShutdownSignals
from recon.nodes.ros.core import ResultPublisher, RosNodeConfig, load_plugins, ns_to_sec_nsec
from recon.nodes.ros.frontend import RosFrontEnd

logger = logging.getLogger(__name__)

FLUSH_DRAIN_S = 0.5


def parse_options_string(text: str) -> dict[str, Any]:
    """Backend options from a ROS 2 string parameter: "key=value,key=value" (spaces also separate)."""
    return parse_backend_options(text.replace(",", " ").split(), flag="backend_options")


def _ros2_default(value: Any) -> Any:
    """ROS 2 parameter defaults must be scalars: tuples become comma-separated strings."""
    return ",".join(value) if isinstance(value, tuple) else value


class Ros2Node(ResultPublisher):
    """rclpy publishers and subscriptions around a RosFrontEnd (same outputs as the ROS 1 node)."""

    def __init__(self, node: Any, front: RosFrontEnd) -> None:
        from geometry_msgs.msg import PoseStamped, TransformStamped
        from nav_msgs.msg import Path
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
        from tf2_msgs.msg import TFMessage

        self.node, self.front = node, front
        self._msgs = {"PoseStamped": PoseStamped, "TransformStamped": TransformStamped, "Path": Path,
                      "PointCloud2": PointCloud2, "PointField": PointField, "TFMessage": TFMessage}
        cfg = front.config
        self.pose_pub = node.create_publisher(PoseStamped, "~/pose", 10)
        self.path_pub = node.create_publisher(Path, "~/path", 2)
        self.points_pub = node.create_publisher(PointCloud2, "~/points", 2)
        self.tf_pub = node.create_publisher(TFMessage, "/tf", 100)
        try:
            from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        except ImportError:
            logger.warning("diagnostic_msgs is not installed: no /diagnostics")
        else:
            self._msgs.update(DiagnosticArray=DiagnosticArray, DiagnosticStatus=DiagnosticStatus, KeyValue=KeyValue)
            self.diagnostics_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 2)
        image_type = CompressedImage if cfg.compressed else Image
        self.image_sub = node.create_subscription(image_type, cfg.image_topic, front.on_image, qos_profile_sensor_data)
        self.info_sub = None
        if cfg.camera_info_topic:
            self.info_sub = node.create_subscription(CameraInfo, cfg.camera_info_topic, front.on_camera_info,
                                                     qos_profile_sensor_data)
        self.depth_sub = None
        if cfg.depth_topic:
            self.depth_sub = node.create_subscription(Image, cfg.depth_topic, front.on_depth, qos_profile_sensor_data)
        logger.info("recon ROS 2 node %s: backend %s, images from %s, map frame %s", node.get_fully_qualified_name(),
                    cfg.backend, cfg.image_topic, cfg.map_frame)

    @staticmethod
    def _stamp(t_ns: int) -> Any:
        from builtin_interfaces.msg import Time

        sec, nsec = ns_to_sec_nsec(t_ns)
        return Time(sec=sec, nanosec=nsec)


def config_with_ros2_params(node: Any, config: RosNodeConfig) -> RosNodeConfig:
    """Declare every parameter with the CLI value as default, then read them back over `config`."""

    def get_param(name: str, default: Any) -> Any:
        if name == "backend_options":
            value = node.declare_parameter(name, "").value
            return parse_options_string(value) if value else None
        value = node.declare_parameter(name, _ros2_default(default)).value
        return default if value == _ros2_default(default) else value

    return config.with_params(get_param)


def run_ros2(config: RosNodeConfig, argv: list[str], node_name: str = "recon") -> int:
    """Start rclpy, read parameters over `config`, run the pipeline and publish until SIGINT/SIGTERM."""
    try:
        import rclpy
    except ImportError as e:  # rclpy comes with a ROS 2 install, not from pip
        raise MissingDependencyError(f"rclpy cannot be imported ({e}); source your ROS 2 install first "
                                     "(source /opt/ros/<distro>/setup.bash) in the shell that runs recon") from e
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init(args=argv)
    node = rclpy.create_node(node_name)
    executor = None
    # Installed after rclpy.init, so these replace rclpy's handlers: the backend is flushed before shutdown.
    with ShutdownSignals() as signals:
        try:
            config = config_with_ros2_params(node, config)
            load_plugins(config.plugins)
            ros_node = Ros2Node(node, RosFrontEnd(config))
            signals.callback, signals.force = ros_node.front.stop, ros_node.front.abort
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            # Callbacks only queue images; the pipeline runs beside them, so a slow model never blocks them.
            threading.Thread(target=executor.spin, name="recon-ros2-executor", daemon=True).start()
            rc = ros_node.front.serve(ros_node.publish, signals.fired, rclpy.ok, FLUSH_DRAIN_S)
        finally:
            if executor is not None:
                executor.shutdown()
            node.destroy_node()
            if rclpy.ok():
                rclpy.shutdown()
    return rc
