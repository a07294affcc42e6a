"""Stand-ins for ROS messages (the fields recon reads, ROS 1 or ROS 2 spelling) and a harness that runs the ROS
front end's real pipeline (push source -> camera node -> ReconNode -> result subscriber) without ROS."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from recon.backends.base import Backend
from recon.nodes.ros.core import Output, RosNodeConfig, ns_to_sec_nsec
from recon.nodes.ros.frontend import RosFrontEnd


def stamp(t_ns: int, ros2: bool = False) -> SimpleNamespace:
    sec, nsec = ns_to_sec_nsec(t_ns)
    return SimpleNamespace(sec=sec, nanosec=nsec) if ros2 else SimpleNamespace(secs=sec, nsecs=nsec)


def image_msg(rgb: np.ndarray, t_ns: int, frame_id: str = "cam", ros2: bool = False) -> SimpleNamespace:
    h, w = rgb.shape[:2]
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp(t_ns, ros2), frame_id=frame_id), height=h, width=w,
                           encoding="rgb8", is_bigendian=0, step=w * 3, data=np.ascontiguousarray(rgb).tobytes())


def info_msg(w: int, h: int, ros2: bool = False, fx: float = 50.0, D: tuple[float, ...] = (0.0,) * 5,
             K: np.ndarray | None = None) -> SimpleNamespace:
    k = [fx, 0, w / 2, 0, fx, h / 2, 0, 0, 1] if K is None else [float(v) for v in np.asarray(K).reshape(-1)]
    fields = {"k": k, "d": list(D)} if ros2 else {"K": k, "D": list(D)}
    return SimpleNamespace(header=SimpleNamespace(frame_id="cam"), width=w, height=h, distortion_model="plumb_bob",
                           **fields)


def depth_msg(depth: np.ndarray, t_ns: int, encoding: str = "16UC1", big: bool = False) -> SimpleNamespace:
    msg = image_msg(np.zeros((1, 1, 3), np.uint8), t_ns)
    dt = {"16UC1": "u2", "32FC1": "f4"}[encoding]
    arr = depth.astype((">" if big else "<") + dt)
    msg.height, msg.width, msg.encoding, msg.is_bigendian = *depth.shape, encoding, int(big)
    msg.step, msg.data = depth.shape[1] * arr.itemsize, arr.tobytes()
    return msg


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


class FrontEndRun:
    """`RosFrontEnd.serve` on a thread, the way an adapter runs it, collecting every Output it would publish.

    `publish` (optional) is called with each Output as well (a ResultPublisher's). `finish()` stops the input like
    SIGINT does and returns the Outputs once the run has drained, flushed and returned.
    """

    def __init__(self, config: RosNodeConfig, backend: Backend | None = None,
                 publish: Callable[[Output], None] | None = None) -> None:
        self.front = RosFrontEnd(config, backend)
        self.outs: list[Output] = []
        self.rc: int | None = None
        self.error: BaseException | None = None
        self._publish = publish
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ros-front-end", daemon=True)
        self._thread.start()

    def _out(self, out: Output) -> None:
        self.outs.append(out)
        if self._publish is not None:
            self._publish(out)

    def _serve(self) -> None:
        try:
            self.rc = self.front.serve(self._out, self._stop, lambda: True, drain_s=0.0)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread by finish()
            self.error = e

    def wait_taken(self) -> None:
        """Until the camera node has taken every queued image (so what follows arrives after them)."""
        wait_for(lambda: self.front.source.waiting == 0)

    def finish(self, timeout: float = 60.0) -> list[Output]:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the front end did not stop"
        if self.error is not None:
            raise self.error
        return self.outs

