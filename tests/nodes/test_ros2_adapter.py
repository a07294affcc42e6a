"""The ROS 2 adapter end to end against a stand-in rclpy (rclpy itself cannot be installed here).

The stand-in records publishers and subscriptions; the message classes are Debian's ROS 1 ones, which have
the same fields as ROS 2's apart from the stamp type (built here as ROS 2's `builtin_interfaces/Time`). This
runs all of `recon.nodes.ros.ros2`: parameter declaration, subscriptions, publishing, and the flush on SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from recon.nodes.ros.core import RosNodeConfig, ns_to_sec_nsec, pose_fields
from recon.nodes.ros.system import INSTALL_HINT, enable_system_ros
from tests.nodes.ros_fake_backend import pose_for

pytestmark = [
    pytest.mark.ros,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/etc/debian_version").exists(),
                       reason="borrows Debian's ROS 1 message classes (Linux, Debian/Ubuntu only)"),
]


class FakePublisher:
    def __init__(self, topic: str) -> None:
        self.topic, self.sent = topic, []

    def publish(self, msg: Any) -> None:
        self.sent.append(msg)


class FakeNode:
    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name, self.params = name, params
        self.declared: dict[str, Any] = {}
        self.publishers: dict[str, FakePublisher] = {}
        self.subscriptions: dict[str, Any] = {}
        self.destroyed = False

    def declare_parameter(self, name: str, default: Any) -> SimpleNamespace:
        self.declared[name] = default
        return SimpleNamespace(value=self.params.get(name, default))

    def create_publisher(self, _type: Any, topic: str, _qos: Any) -> FakePublisher:
        return self.publishers.setdefault(topic, FakePublisher(topic))

    def create_subscription(self, msg_type: Any, topic: str, callback: Any, qos: Any) -> object:
        self.subscriptions[topic] = (msg_type, callback, qos)
        return object()

    def get_fully_qualified_name(self) -> str:
        return "/" + self.name

    def destroy_node(self) -> None:
        self.destroyed = True


def _fake_rclpy(params: dict[str, Any]) -> dict[str, ModuleType]:
    state = {"ok": False, "node": None}
    rclpy = ModuleType("rclpy")
    rclpy.init = lambda args=None: state.update(ok=True, args=args)
    rclpy.ok = lambda: state["ok"]
    rclpy.shutdown = lambda: state.update(ok=False)

    def create_node(name: str) -> FakeNode:
        state["node"] = FakeNode(name, params)
        return state["node"]

    rclpy.create_node = create_node
    rclpy.state = state
    qos = ModuleType("rclpy.qos")
    qos.qos_profile_sensor_data = "sensor_data"
    executors = ModuleType("rclpy.executors")

    class SingleThreadedExecutor:
        def __init__(self) -> None:
            self._stop = threading.Event()

        def add_node(self, node: FakeNode) -> None:
            self.node = node

        def spin(self) -> None:
            self._stop.wait()

        def shutdown(self) -> None:
            self._stop.set()

    executors.SingleThreadedExecutor = SingleThreadedExecutor
    builtin = ModuleType("builtin_interfaces")
    builtin_msg = ModuleType("builtin_interfaces.msg")

    class Time:
        def __init__(self, sec: int = 0, nanosec: int = 0) -> None:
            self.sec, self.nanosec = sec, nanosec

    builtin_msg.Time = Time
    return {"rclpy": rclpy, "rclpy.qos": qos, "rclpy.executors": executors, "builtin_interfaces": builtin,
            "builtin_interfaces.msg": builtin_msg}


def _ros2_image(i: int) -> SimpleNamespace:
    sec, nsec = ns_to_sec_nsec(1_000_000_000 * (100 + i) + 7)
    rgb = np.full((6, 8, 3), 10 * i, np.uint8)
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nsec), frame_id="cam2"),
                           height=6, width=8, encoding="rgb8", is_bigendian=0, step=24, data=rgb.tobytes())


def test_ros2_adapter_with_stand_in_rclpy(monkeypatch: pytest.MonkeyPatch) -> None:
    enable_system_ros()
    try:
        import geometry_msgs.msg  # noqa: F401 - Debian's ROS 1 messages stand in for ROS 2's
        import sensor_msgs.msg  # noqa: F401
    except ImportError as e:
        pytest.fail(f"ROS message packages missing ({e}); install: {INSTALL_HINT}")
    fakes = _fake_rclpy({"map_frame": "odom2", "backend_options": "lag=1", "plugins": "tests.nodes.ros_fake_backend"})
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    from recon.nodes.ros import ros2

    monkeypatch.setattr(ros2, "FLUSH_DRAIN_S", 0.0)
    state = fakes["rclpy"].state
    n = 3

    def feed() -> None:
        deadline = time.monotonic() + 20
        while (state["node"] is None or "/img" not in state["node"].subscriptions) and time.monotonic() < deadline:
            time.sleep(0.01)
        node = state["node"]
        for i in range(n):
            node.subscriptions["/img"][1](_ros2_image(i))
        while len(node.publishers["~/pose"].sent) < n - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # handled by the adapter (flush), not by pytest

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    config = RosNodeConfig(backend="ros_fake", image_topic="/img", camera_info_topic="", queue_size=8)
    assert ros2.run_ros2(config, ["recon", "--ros-args"], node_name="recon2") == 0
    feeder.join(5)

    node = state["node"]
    assert node.destroyed and not state["ok"] and state["args"] == ["recon", "--ros-args"]
    assert node.declared["map_frame"] == "map" and node.declared["backend_options"] == ""
    assert node.subscriptions["/img"][2] == "sensor_data"
    poses = node.publishers["~/pose"].sent
    assert len(poses) == n  # the last one only through the flush at SIGINT (lag=1)
    for i, p in enumerate(poses):
        assert (p.header.stamp.sec, p.header.stamp.nanosec) == (100 + i, 7) and p.header.frame_id == "odom2"
        np.testing.assert_allclose([p.pose.position.x, p.pose.position.y, p.pose.position.z],
                                   pose_fields(pose_for(i))[0])
    tfs = [t for m in node.publishers["/tf"].sent for t in m.transforms]
    assert [(t.header.frame_id, t.child_frame_id, t.header.stamp.sec) for t in tfs] == [
        ("odom2", "cam2", 100 + i) for i in range(n)]
    assert [len(m.poses) for m in node.publishers["~/path"].sent] == [1, 2, 3]
    clouds = node.publishers["~/points"].sent
    assert [c.width for c in clouds] == [23] * n and clouds[0].point_step == 16
