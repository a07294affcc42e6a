"""The ROS 1 (rospy) node behind `recon node ros`.

Subscribes to an Image (or CompressedImage) topic and its camera_info, streams the images through the shared node
pipeline (`recon.nodes.ros.frontend`: callbacks only queue them), and publishes `~pose` (PoseStamped), `~path`
(Path), `~points` (PointCloud2, xyz + packed rgb) and tf map -> camera (map -> odom -> camera with loop closure) on
`/tf`, each stamped with the stamp of the image the result belongs to. All the numbers come from
`recon.nodes.ros.core` and the pipeline; this module only moves messages.

Example:
    recon node ros --backend geometric --image-topic /camera/image_raw _map_frame:=odom
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from recon.nodes.cli_util import ShutdownSignals
from recon.nodes.ros.core import ResultPublisher, RosNodeConfig, load_plugins, ns_to_sec_nsec
from recon.nodes.ros.frontend import RosFrontEnd
from recon.nodes.ros.system import import_rospy

logger = logging.getLogger(__name__)

FLUSH_DRAIN_S = 0.5


class RosNode(ResultPublisher):
    """One rospy node: subscriptions and publishers around a RosFrontEnd."""

    def __init__(self, front: RosFrontEnd) -> None:
        rospy = import_rospy()
        from geometry_msgs.msg import PoseStamped, TransformStamped
        from nav_msgs.msg import Path
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
        from tf2_msgs.msg import TFMessage

        self._rospy = rospy
        self._msgs = {"PoseStamped": PoseStamped, "TransformStamped": TransformStamped, "Path": Path,
                      "PointCloud2": PointCloud2, "PointField": PointField, "TFMessage": TFMessage}
        self.front = front
        cfg = front.config
        self.pose_pub = rospy.Publisher("~pose", PoseStamped, queue_size=10)
        self.path_pub = rospy.Publisher("~path", Path, queue_size=2)
        self.points_pub = rospy.Publisher("~points", PointCloud2, queue_size=2)
        self.tf_pub = rospy.Publisher("/tf", TFMessage, queue_size=10)
        try:
            from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
        except ImportError:
            logger.warning("diagnostic_msgs is not installed: no /diagnostics (apt install python3-diagnostic-msgs)")
        else:
            self._msgs.update(DiagnosticArray=DiagnosticArray, DiagnosticStatus=DiagnosticStatus, KeyValue=KeyValue)
            self.diagnostics_pub = rospy.Publisher("/diagnostics", DiagnosticArray, queue_size=2)
        image_type = CompressedImage if cfg.compressed else Image
        # Large buff_size: with the default, rospy keeps reading stale data from the socket for big images.
        self.image_sub = rospy.Subscriber(cfg.image_topic, image_type, front.on_image, queue_size=cfg.queue_size,
                                          buff_size=1 << 26)
        self.info_sub = None
        if cfg.camera_info_topic:
            self.info_sub = rospy.Subscriber(cfg.camera_info_topic, CameraInfo, front.on_camera_info, queue_size=1)
        self.depth_sub = None
        if cfg.depth_topic:
            self.depth_sub = rospy.Subscriber(cfg.depth_topic, Image, front.on_depth, queue_size=5, buff_size=1 << 26)
        logger.info("recon ROS node %s: backend %s (%s node), images from %s (%s), camera_info from %s, map frame %s",
                    rospy.get_name(), cfg.backend, cfg.node or "in-process", rospy.resolve_name(cfg.image_topic),
                    "CompressedImage" if cfg.compressed else "Image",
                    rospy.resolve_name(cfg.camera_info_topic) if cfg.camera_info_topic else "(none)", cfg.map_frame)

    def _stamp(self, t_ns: int) -> Any:
        sec, nsec = ns_to_sec_nsec(t_ns)
        return self._rospy.Time(sec, nsec)


def _keep_console_logging(handlers: list[logging.Handler]) -> None:
    """init_node replaces the root handlers with ROS's log file; keep recon's own lines on the console too."""
    root = logging.getLogger()
    recon_logger = logging.getLogger("recon")
    for handler in handlers:
        if handler not in root.handlers and handler not in recon_logger.handlers:
            recon_logger.addHandler(handler)


def _wait_for_master(argv: list[str], stop: threading.Event) -> bool:
    """Wait for the ROS master, saying where we look (rospy would wait silently); False if stopped first."""
    import rosgraph.masterapi
    from rosgraph.rosenv import get_master_uri

    uri = get_master_uri(argv=argv)
    if rosgraph.masterapi.is_online(uri):
        return True
    logger.info("waiting for the ROS master at %s (start roscore, or set ROS_MASTER_URI)", uri)
    while not stop.wait(0.5):
        if rosgraph.masterapi.is_online(uri):
            return True
    return False


def run_ros1(config: RosNodeConfig, argv: list[str], node_name: str = "recon") -> int:
    """Start rospy, read `~` parameters over `config`, run the pipeline and publish; returns an exit code."""
    rospy = import_rospy()
    # Our own SIGINT/SIGTERM handling (rospy's is disabled) so the backend is flushed before publishers close.
    with ShutdownSignals() as signals:
        try:
            if not _wait_for_master(argv, signals.fired):
                return 130
            console = list(logging.getLogger().handlers)
            rospy.init_node(node_name, argv=argv, anonymous=False, log_level=rospy.INFO, disable_signals=True)
            _keep_console_logging(console)
            config = config.with_params(lambda name, default: rospy.get_param("~" + name, default))
            load_plugins(config.plugins)
            node = RosNode(RosFrontEnd(config))
            signals.callback, signals.force = node.front.stop, node.front.abort
            rc = node.front.serve(node.publish, signals.fired, lambda: not rospy.is_shutdown(), FLUSH_DRAIN_S)
        finally:
            if rospy.core.is_initialized() and not rospy.is_shutdown():
                rospy.signal_shutdown("recon node exiting")
    return rc
