"""`recon node ros`: a ROS front end of the node pipeline, publishing poses, path, point clouds and tf.

Flags give defaults; the node's private parameters on the ROS parameter server (`~backend`, `~image_topic`,
... see docs/ros.md) override them, and ROS remappings / `_param:=value` may follow the flags.

Examples:
    recon node ros --backend geometric --image-topic /camera/color/image_raw \\
        --camera-info-topic /camera/color/camera_info
    recon node ros --compressed --image-topic /camera/image_raw/compressed _map_frame:=odom __name:=recon
    recon node ros --ros 2 --image-topic /image -- --ros-args -p map_frame:=odom   # ROS 2 (rclpy)
    recon node ros --node tcp://gpu-box:5555 --image-topic /camera/image_raw      # an external `recon node recon`
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from recon.backends.flags import add_backend_arguments
from recon.errors import ConfigError, MissingDependencyError
from recon.utils.imports import is_available

if TYPE_CHECKING:
    from recon.nodes.ros.core import RosNodeConfig

logger = logging.getLogger(__name__)

HELP = "ROS node: image + camera_info in; pose, path, points and tf out (ROS 1 rospy, or ROS 2 rclpy)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _defaults()
    parser.add_argument("--ros", choices=("auto", "1", "2"), default="auto",
                        help="ROS version: 1 (rospy, Debian's ros-core), 2 (rclpy), auto (1 if rospy is found)")
    parser.add_argument("--name", default="recon", help="node name (default recon; __name:= also works)")
    add_backend_arguments(parser, default=d.backend)  # --backend, the named flags, --loop-closure, -o KEY=VALUE
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, so it can register extra backends (repeatable)")
    parser.add_argument("--image-topic", default=d.image_topic, help=f"image topic (default {d.image_topic})")
    parser.add_argument("--camera-info-topic", default=d.camera_info_topic,
                        help=f"camera_info topic, '' for none (default {d.camera_info_topic})")
    parser.add_argument("--compressed", action="store_true", help="subscribe to sensor_msgs/CompressedImage")
    parser.add_argument("--depth-topic", default=d.depth_topic,
                        help="depth Image registered to the colour image (16UC1 mm or 32FC1 m); default none")
    parser.add_argument("--depth-scale", type=float, default=d.depth_scale,
                        help=f"metres per unit of 16-bit depth (default {d.depth_scale})")
    parser.add_argument("--map-frame", default=d.map_frame, help=f"map frame id (default {d.map_frame})")
    parser.add_argument("--odom-frame", default=d.odom_frame,
                        help=f"odometry frame id between map and camera when loops are closed (default {d.odom_frame})")
    parser.add_argument("--camera-frame", default=d.camera_frame,
                        help="tf child frame (default: the image header's frame_id)")
    parser.add_argument("--stream-id", default=d.stream_id, help=f"stream id given to the backend ({d.stream_id})")
    parser.add_argument("--queue-size", type=int, default=d.queue_size,
                        help=f"images waiting for the backend, newest wins (default {d.queue_size})")
    parser.add_argument("--cloud-stride", type=int, default=d.cloud_stride, help="publish every n-th point")
    parser.add_argument("--min-confidence", type=float, default=d.min_confidence, help="drop less confident points")
    parser.add_argument("--max-points", type=int, default=d.max_points, help="points per cloud, 0: no cap")
    parser.add_argument("--max-path", type=int, default=d.max_path, help="poses kept in ~path")
    parser.add_argument("--no-undistort", action="store_true",
                        help="use images as captured even when the CameraInfo has lens distortion")
    parser.add_argument("--node", default=d.node, metavar="ENDPOINT",
                        help="ROUTER endpoint of an external `recon node recon` (e.g. tcp://127.0.0.1:5555; results "
                             "from its port + 1, status from + 2); default: the node runs in this process")
    parser.add_argument("--state-dir", default=d.state_dir, metavar="DIR",
                        help="in-process node: checkpoint the stream here; a restarted ROS node continues its map")
    parser.add_argument("ros_args", nargs=argparse.REMAINDER,
                        help="ROS remappings and parameters: name:=value, _param:=value, __name:=node")


def _defaults() -> RosNodeConfig:
    """Field defaults (the core is imported lazily so `recon --help` stays fast)."""
    from recon.nodes.ros.core import RosNodeConfig

    return RosNodeConfig()


def config_from_args(args: argparse.Namespace) -> RosNodeConfig:
    """RosNodeConfig from the parsed flags (parameters on the server are applied later, by the node).

    The backend flags are those of `recon replay` / `recon live` (recon.backends.flags), checked against the
    backend's config here: plugins are imported first, so their backends are known. `--loop-closure auto` decides
    with the `--backend` flag's backend."""
    from recon.backends.flags import backend_options
    from recon.nodes.ros.core import RosNodeConfig, load_plugins

    load_plugins(tuple(args.plugin))
    options = backend_options(args, args.backend)
    return RosNodeConfig(
        backend=args.backend, backend_options=options, plugins=tuple(args.plugin), image_topic=args.image_topic,
        camera_info_topic=args.camera_info_topic, compressed=args.compressed, map_frame=args.map_frame,
        odom_frame=args.odom_frame,
        camera_frame=args.camera_frame, stream_id=args.stream_id, queue_size=args.queue_size,
        cloud_stride=args.cloud_stride, min_confidence=args.min_confidence, max_points=args.max_points,
        max_path=args.max_path, depth_topic=args.depth_topic, depth_scale=args.depth_scale,
        undistort=not args.no_undistort, node=args.node, state_dir=args.state_dir)


def _pick_version(choice: str) -> str:
    """'1' or '2'; auto prefers ROS 1 (rospy, including Debian's), then ROS 2 (rclpy)."""
    if choice != "auto":
        return choice
    from recon.nodes.ros.system import enable_system_ros

    enable_system_ros()
    if is_available("rospy"):
        return "1"
    if is_available("rclpy"):
        return "2"
    from recon.nodes.ros.system import INSTALL_HINT

    raise MissingDependencyError(f"neither rospy (ROS 1) nor rclpy (ROS 2) can be imported; for ROS 1: "
                                 f"{INSTALL_HINT}; for ROS 2 source /opt/ros/<distro>/setup.bash")


def ros_argv(ros_args: list[str]) -> list[str]:
    """argv handed to rospy/rclpy; a recon flag after the first remapping would be silently lost, so refuse it."""
    out = ["recon"]
    for i, arg in enumerate(ros_args):
        if arg == "--ros-args":
            return out + ros_args[i:]
        if arg == "--":
            continue
        if arg.startswith("-"):
            raise ConfigError(f"{arg!r} comes after the ROS arguments {ros_args[:i]}; put recon flags first "
                              "(ROS 2 arguments go after `-- --ros-args`)")
        out.append(arg)
    return out


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    argv = ros_argv(args.ros_args)
    version = _pick_version(args.ros)
    if version == "1":
        from recon.nodes.ros.ros1 import run_ros1

        return run_ros1(config, argv, node_name=args.name)
    from recon.nodes.ros.ros2 import run_ros2

    return run_ros2(config, argv, node_name=args.name)
