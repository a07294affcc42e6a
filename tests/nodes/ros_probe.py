"""Test helper run as a subprocess: publishes synthetic images + camera_info and records the node's outputs.

It is its own ROS node (rospy allows one per process, and the pytest process must stay free of rospy's
threads and signal handlers). Images are solid colours that encode their index, stamped far from wall
time so a stamp can only match if the node copied it from the image header. Everything received on
~pose, ~path, ~points, /tf (and /diagnostics with --diagnostics) is written to a JSON file for the test.

    python tests/nodes/ros_probe.py --node /recon_a --count 5 --out rec.json [--compressed png] [--encoding bgr8]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recon.datasets.ros_msgs import NS_PER_S, stamp_to_ns
from recon.nodes.ros.core import cloud_to_array, ns_to_sec_nsec, unpack_rgb
from recon.nodes.ros.system import import_rospy

logger = logging.getLogger("ros_probe")

T0_NS = 1_500_000_000 * NS_PER_S + 123_456_789  # 2017: nowhere near the machine's clock
DT_NS = 100_000_000
WIDTH, HEIGHT = 64, 48  # solid images; --pattern texture uses --size
K = [50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0]


def colour(i: int) -> tuple[int, int, int]:
    """The solid RGB colour of image i (each channel distinct so channel swaps are caught)."""
    return (20 * i + 5, 100, 200)


def stamp_ns(i: int) -> int:
    return T0_NS + i * DT_NS


def make_rgb(i: int, pattern: str, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Image i: a solid colour(i), or a window sliding 2 px per frame over a fixed smooth random texture."""
    if pattern == "solid":
        rgb = np.empty((height, width, 3), np.uint8)
        rgb[...] = colour(i)
        return rgb
    import cv2

    noise = np.random.default_rng(7).integers(0, 256, (height // 4, (width + 64) // 4, 3), dtype=np.uint8)
    texture = cv2.resize(noise, (width + 64, height), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(texture[:, 2 * i: 2 * i + width])


def encode_image(rgb: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """(data, step) of an RGB image in a raw encoding."""
    height, width = rgb.shape[:2]
    if encoding == "rgb8":
        arr = rgb
    elif encoding == "bgr8":
        arr = rgb[..., ::-1]
    elif encoding == "mono8":
        arr = rgb[..., :1]
    elif encoding == "16UC1":
        arr = (rgb[..., :1].astype(np.uint16) << 8).astype("<u2")
    else:
        raise ValueError(encoding)
    arr = np.ascontiguousarray(arr)
    return arr.tobytes(), width * arr.shape[2] * arr.dtype.itemsize


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--node", required=True, help="resolved name of the recon node, e.g. /recon_a")
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--expect", type=int, default=None, help="poses to wait for (default --count)")
    ap.add_argument("--encoding", default="rgb8")
    ap.add_argument("--compressed", default="", help="jpeg or png: publish CompressedImage")
    ap.add_argument("--pattern", choices=("solid", "texture"), default="solid",
                    help="solid colour(i), or a random texture sliding 2 px per frame (for real backends)")
    ap.add_argument("--image-topic", default="/cam/image")
    ap.add_argument("--info-topic", default="/cam/camera_info")
    ap.add_argument("--frame-id", default="cam_optical")
    ap.add_argument("--size", default=f"{WIDTH}x{HEIGHT}", help="WxH of --pattern texture images")
    ap.add_argument("--depth-mm", type=int, default=0, help="also publish constant 16UC1 depth on --depth-topic")
    ap.add_argument("--depth-topic", default="/cam/depth")
    ap.add_argument("--ready-at", type=int, default=0, help="write --ready-file once this many poses arrived")
    ap.add_argument("--ready-file", default="")
    ap.add_argument("--k1", type=float, default=0.0, help="radial distortion k1 of the published CameraInfo")
    ap.add_argument("--diagnostics", action="store_true", help="also record /diagnostics and wait for one")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s probe %(levelname)s: %(message)s")

    rospy = import_rospy()
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Path as PathMsg
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
    from tf2_msgs.msg import TFMessage

    rospy.init_node("recon_probe", anonymous=True, disable_signals=True)
    rec: dict[str, list[dict[str, Any]]] = {"pose": [], "path": [], "points": [], "tf": [], "diagnostics": []}

    def on_pose(m: Any) -> None:
        p, q = m.pose.position, m.pose.orientation
        rec["pose"].append({"stamp": stamp_to_ns(m.header.stamp), "frame_id": m.header.frame_id,
                            "position": [p.x, p.y, p.z], "orientation": [q.x, q.y, q.z, q.w]})

    def on_path(m: Any) -> None:
        rec["path"].append({"stamp": stamp_to_ns(m.header.stamp), "frame_id": m.header.frame_id,
                            "stamps": [stamp_to_ns(p.header.stamp) for p in m.poses],
                            "positions": [[p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in m.poses]})

    def on_points(m: Any) -> None:
        arr = cloud_to_array(m.fields, m.point_step, m.width, m.height, m.data)
        rec["points"].append({
            "stamp": stamp_to_ns(m.header.stamp), "frame_id": m.header.frame_id, "width": m.width,
            "height": m.height, "point_step": m.point_step, "row_step": m.row_step, "is_dense": bool(m.is_dense),
            "fields": [[f.name, f.offset, f.datatype, f.count] for f in m.fields],
            "xyz": np.stack([arr["x"], arr["y"], arr["z"]], 1).astype(float).tolist(),
            "rgb": unpack_rgb(arr["rgb"]).astype(int).tolist()})

    def on_tf(m: Any) -> None:
        for t in m.transforms:
            tr, r = t.transform.translation, t.transform.rotation
            rec["tf"].append({"stamp": stamp_to_ns(t.header.stamp), "parent": t.header.frame_id,
                              "child": t.child_frame_id, "translation": [tr.x, tr.y, tr.z],
                              "rotation": [r.x, r.y, r.z, r.w]})

    subs = [rospy.Subscriber(args.node + "/pose", PoseStamped, on_pose, queue_size=100),
            rospy.Subscriber(args.node + "/path", PathMsg, on_path, queue_size=100),
            rospy.Subscriber(args.node + "/points", PointCloud2, on_points, queue_size=100),
            rospy.Subscriber("/tf", TFMessage, on_tf, queue_size=100)]
    if args.diagnostics:
        from diagnostic_msgs.msg import DiagnosticArray

        def on_diagnostics(m: Any) -> None:
            for s in m.status:
                rec["diagnostics"].append({"name": s.name, "level": int(s.level), "message": s.message,
                                           "values": {kv.key: kv.value for kv in s.values}})

        subs.append(rospy.Subscriber("/diagnostics", DiagnosticArray, on_diagnostics, queue_size=100))
    image_pub = rospy.Publisher(args.image_topic, CompressedImage if args.compressed else Image, queue_size=100)
    info_pub = rospy.Publisher(args.info_topic, CameraInfo, queue_size=10, latch=True)

    deadline = time.monotonic() + args.timeout
    pubs = [image_pub, info_pub]
    width, height = (int(v) for v in args.size.split("x")) if args.pattern == "texture" else (WIDTH, HEIGHT)
    if args.depth_mm:
        depth_pub = rospy.Publisher(args.depth_topic, Image, queue_size=100)
        pubs.append(depth_pub)
    while time.monotonic() < deadline and not all(x.get_num_connections() > 0 for x in subs + pubs):
        time.sleep(0.05)
    if not all(x.get_num_connections() > 0 for x in subs + pubs):
        logger.error("the node did not connect within %.0f s", args.timeout)
        return 2

    def info_msg(i: int) -> Any:
        info = CameraInfo(width=WIDTH, height=HEIGHT, K=K, D=[args.k1, 0.0, 0.0, 0.0, 0.0],
                          distortion_model="plumb_bob")
        if (width, height) != (WIDTH, HEIGHT):  # the same lens at the texture's resolution
            sx, sy = width / WIDTH, height / HEIGHT
            info.width, info.height = width, height
            info.K = [K[0] * sx, 0.0, K[2] * sx, 0.0, K[4] * sy, K[5] * sy, 0.0, 0.0, 1.0]
        info.header.stamp = rospy.Time(*ns_to_sec_nsec(stamp_ns(i)))
        info.header.frame_id = args.frame_id
        return info

    info_pub.publish(info_msg(0))
    time.sleep(1.0)  # camera_info travels on its own connection: let it arrive before the first image
    import cv2

    for i in range(args.count):
        info_pub.publish(info_msg(i))
        if args.depth_mm:  # before the colour image, as a registered RGB-D driver would
            depth = Image(height=height, width=width, encoding="16UC1", is_bigendian=0, step=2 * width,
                          data=np.full((height, width), args.depth_mm, "<u2").tobytes())
            depth.header.stamp = rospy.Time(*ns_to_sec_nsec(stamp_ns(i)))
            depth.header.frame_id = args.frame_id
            depth_pub.publish(depth)
        if args.compressed:
            bgr = np.ascontiguousarray(make_rgb(i, args.pattern, width, height)[..., ::-1])
            ok, buf = cv2.imencode("." + args.compressed, bgr)
            assert ok
            msg = CompressedImage(format=args.compressed, data=buf.tobytes())
        else:
            data, step = encode_image(make_rgb(i, args.pattern, width, height), args.encoding)
            msg = Image(height=height, width=width, encoding=args.encoding, is_bigendian=0, step=step, data=data)
        msg.header.stamp = rospy.Time(*ns_to_sec_nsec(stamp_ns(i)))
        msg.header.frame_id = args.frame_id
        image_pub.publish(msg)
        time.sleep(0.1)

    expect = args.count if args.expect is None else args.expect
    while time.monotonic() < deadline and (min(len(rec["pose"]), len(rec["path"]), len(rec["points"])) < expect
                                           or (args.diagnostics and not rec["diagnostics"])):
        if args.ready_file and len(rec["pose"]) >= args.ready_at and not Path(args.ready_file).exists():
            Path(args.ready_file).write_text("ready")  # the test may now stop the node (flush on shutdown)
        time.sleep(0.05)
    time.sleep(0.3)  # anything beyond the expected count would show up here
    Path(args.out).write_text(json.dumps(rec))
    logger.info("recorded %s", {k: len(v) for k, v in rec.items()})
    rospy.signal_shutdown("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
