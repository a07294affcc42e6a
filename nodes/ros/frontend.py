"""The ROS node as a front end of the shared node pipeline: ROS messages in, the same nodes as everywhere, ROS out.

    ROS callbacks --push--> PushSource --CameraNode--> ReconNode (inproc://, or an external one over tcp://)
                                                            |
    adapter.publish <-- RosResults (a sink) <-- ViewerNode (SUB) <-- results

Callbacks only queue the newest messages (`~queue_size`; beyond it the oldest is dropped and counted). The camera
node takes them in its own thread, where `RosInputs.frame_from_msg` decodes each image (the codec of the bag
reader), stamps it with its header stamp, gives it the CameraInfo's K scaled to its size and pairs it with the
nearest depth image; the camera node then undistorts it (a distorted CameraInfo) and streams it with credit flow
control. The reconstruction runs in a ReconNode session, which brings resets on a size change, checkpoints
(`~state_dir`) and its status counters; results come back on the node's publisher like a viewer's, and `RosResults`
turns each into an `Output` (pose, tf links, ~path entry, cloud) that the ROS 1 or ROS 2 adapter publishes.

With `~node` the reconstruction node is an external `recon node recon` (on this machine or another): nothing else
changes, except that results its backend still holds when the ROS node stops stay with that node's session.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from recon.backends.base import Backend
from recon.datasets.ros_msgs import NS_PER_S, camera_info_from_msg, decode_depth, decode_image, stamp_to_ns
from recon.errors import ConfigError, ProtocolError
from recon.nodes.latency import LatencyWindow
from recon.nodes.pipeline import RemoteNode, run_pipeline
from recon.nodes.ros.core import Output, PathBuffer, RosNodeConfig, cloud_from_result
from recon.nodes.sources import PushSource
from recon.sinks.points import resample_nearest
from recon.types import CameraInfo, Frame, FrameResult
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)

DEPTH_KEPT = 30
"""Depth messages kept for pairing (about one second of a 30 Hz camera)."""

FRAME_IDS_KEPT = 4096
"""Image header frame ids remembered by seq, for the tf child frame of results that come late."""

STATUS_PERIOD_S = 1.0
"""How often the node's status is read for /diagnostics (its rate)."""


def same_camera(a: CameraInfo | None, b: CameraInfo) -> bool:
    """True when `b` describes the camera `a` does (a driver repeats its CameraInfo with every image)."""
    return (a is not None and (a.width, a.height, a.frame_id) == (b.width, b.height, b.frame_id)
            and np.array_equal(a.K, b.K) and np.array_equal(a.distortion, b.distortion))


class RosInputs:
    """Incoming ROS messages turned into Frames: intrinsics, registered depth, stamps, header frame ids.

    `on_camera_info` and `on_depth` run on ROS callback threads; `frame_from_msg` runs on the camera node's thread
    (it may wait up to `depth_wait` for the depth of its image). Bad messages are counted in `faults` and dropped.
    """

    def __init__(self, config: RosNodeConfig, source: PushSource) -> None:
        self.config = config
        self.source = source
        self.faults = WarnOnce(logger)
        self.waiting_for_info = 0
        self.frame_ids: OrderedDict[int, str] = OrderedDict()
        self._depths: OrderedDict[int, Any] = OrderedDict()  # stamp ns -> depth message, newest last
        self._depth_cond = threading.Condition()
        self._lock = threading.Lock()
        self._said_no_undistort = False

    @property
    def camera_info(self) -> CameraInfo | None:
        return self.source.camera_info

    def on_camera_info(self, msg: Any) -> None:
        """Take the newest intrinsics; a repeat of the current ones keeps the object (and the undistortion maps)."""
        try:
            info = camera_info_from_msg(msg)
        except (ProtocolError, ConfigError) as e:
            self.faults("camera_info", "ignoring camera_info: %s", e)
            return
        if not self.config.undistort and info.distortion.size:
            # As `recon live --no-undistort`: the camera node undistorts whenever the CameraInfo has coefficients.
            if not self._said_no_undistort:
                self._said_no_undistort = True
                logger.info("~undistort is off: images are used as captured (distortion %s ignored)",
                            info.distortion.tolist())
            info = dataclasses.replace(info, distortion=np.zeros(0))
        if not same_camera(self.source.camera_info, info):
            self.source.camera_info = info

    def on_depth(self, msg: Any) -> None:
        """Keep recent depth messages by stamp (decoded only when a colour image claims one)."""
        with self._depth_cond:
            self._depths[stamp_to_ns(msg.header.stamp)] = msg
            while len(self._depths) > DEPTH_KEPT:
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

    def frame_from_msg(self, msg: Any, seq: int) -> Frame | None:
        """Image message -> Frame (header stamp, K of the CameraInfo at the image's size, paired depth), or None
        when it cannot be used yet (no CameraInfo) or at all (undecodable)."""
        cfg = self.config
        info = self.source.camera_info
        if cfg.camera_info_topic and cfg.wait_camera_info and info is None:
            self.waiting_for_info += 1
            self.faults("no_camera_info", "dropping images until the first message on %s arrives",
                        cfg.camera_info_topic)
            return None
        try:
            rgb = decode_image(msg)
        except ProtocolError as e:
            self.faults("bad_image", "dropping an image: %s", e)
            return None
        K = None
        if info is not None:
            h, w = rgb.shape[:2]
            K = (info if (info.width, info.height) == (w, h) else info.scaled(w, h)).K
        t_ns = stamp_to_ns(msg.header.stamp)
        depth = self._take_depth(t_ns, rgb.shape[:2]) if cfg.depth_topic else None
        with self._lock:
            self.frame_ids[seq] = str(msg.header.frame_id)
            while len(self.frame_ids) > FRAME_IDS_KEPT:
                self.frame_ids.popitem(last=False)
        return Frame(cfg.stream_id, seq, t_ns, rgb, K, depth=depth)

    def frame_id_of(self, seq: int) -> str:
        with self._lock:
            return self.frame_ids.get(seq, "")


class RosResults:
    """The pipeline's sink on the ROS side: each result becomes an Output handed to `publish` (the adapter's).

    Runs on the result subscriber's thread. Only the results of `stream_id` count (an external node publishes all
    its streams). A new world frame (the node reset the stream: another image size, a restart without a checkpoint)
    starts ~path again, since its poses would not be comparable.
    """

    name = "ros"

    def __init__(self, config: RosNodeConfig, inputs: RosInputs) -> None:
        self.config = config
        self.inputs = inputs
        self.publish: Callable[[Output], None] | None = None
        self.path = PathBuffer(config.max_path)
        self.results_out = 0
        self.resets = 0
        self.node_latency = LatencyWindow()  # the node's capture-to-publish, per result
        self.last_result_at = 0.0

    def camera_frame_for(self, seq: int) -> str:
        """The tf child frame: the configured one, else the image header's frame_id, else "camera"."""
        return self.config.camera_frame or self.inputs.frame_id_of(seq) or "camera"

    def output(self, result: FrameResult) -> Output:
        """The Output of one result (its ~path entry is added or revised first)."""
        cfg = self.config
        self.path.add(result)
        cloud = cloud_from_result(result, cfg.cloud_stride, cfg.min_confidence, cfg.max_points)
        return Output(result, result.t_ns, self.camera_frame_for(result.seq), cloud)

    def on_result(self, result: FrameResult) -> None:
        if result.stream_id != self.config.stream_id:  # an external node publishes every stream it serves
            return
        out = self.output(result)
        self.results_out += 1
        self.last_result_at = time.monotonic()
        if self.publish is not None:
            self.publish(out)

    def on_segment(self, stream_id: str, segment: int, reason: str) -> None:
        if stream_id != self.config.stream_id:
            return
        logger.warning("stream %s is in a new world frame (%s): ~path starts again", stream_id, reason)
        self.path = PathBuffer(self.config.max_path)
        self.resets += 1

    def on_latency(self, stream_id: str, seq: int, t_ns: int, node_ms: float) -> None:
        if stream_id == self.config.stream_id:
            self.node_latency.add(node_ms)

    def close(self) -> None:
        pass


def remote_node(config: RosNodeConfig) -> RemoteNode | None:
    """The external reconstruction node's endpoints (`~node`, publish and control defaulting to port + 1, + 2)."""
    if not config.node:
        return None
    if not config.node.startswith("tcp://") and not (config.node_publish and config.node_control):
        raise ConfigError(f"~node {config.node!r}: give ~node_publish and ~node_control for a non-tcp endpoint")

    def port_plus(k: int) -> str:
        host, port = config.node.rsplit(":", 1)
        return f"{host}:{int(port) + k}"

    return RemoteNode(config.node, config.node_publish or port_plus(1), config.node_control or port_plus(2))


class RosFrontEnd:
    """One ROS node's side of the pipeline: the callbacks, the push source, the result sink and the run.

    `backend`: a built backend for the in-process node (tests hand one over); by default the node builds
    `config.backend` with `config.backend_options`.
    """

    def __init__(self, config: RosNodeConfig, backend: Backend | None = None) -> None:
        self.config = config
        self.backend = backend
        self.remote = remote_node(config)
        if self.remote is not None and backend is not None:
            raise ConfigError("a built backend runs only in the in-process node, not with ~node")
        if self.remote is None and backend is None:
            from recon.backends import backend_config

            backend_config(config.backend, **config.backend_options)  # a bad option fails here, clearly
        self.source = PushSource(config.stream_id, self._frame, capacity=config.queue_size)
        self.inputs = RosInputs(config, self.source)
        self.results = RosResults(config, self.inputs)
        self.latency = LatencyWindow()  # capture (header stamp) to ROS publish, what /diagnostics reports
        self.node_status: dict[str, Any] = {}
        self.frames_in = 0  # images taken from the push source and turned into frames
        self.stats: Any = None  # recon.nodes.pipeline.PipelineStats once `serve` returned
        self._status_fn: Callable[[], dict[str, Any]] | None = None
        self._abort = threading.Event()
        self._stopping = threading.Event()  # remote: ends a wait for the external node

    # -- inputs (ROS callback threads) ------------------------------------------------------------------------
    def on_camera_info(self, msg: Any) -> None:
        self.inputs.on_camera_info(msg)

    def on_depth(self, msg: Any) -> None:
        self.inputs.on_depth(msg)

    def on_image(self, msg: Any) -> None:
        """Queue an image for the pipeline; the oldest waiting one is dropped when `queue_size` wait."""
        drops = self.source.drops
        self.source.push(msg)
        if self.source.drops > drops:
            self.inputs.faults("dropped", "the backend is slower than the image topic; dropping the oldest images")

    def _frame(self, msg: Any, seq: int) -> Frame | None:
        frame = self.inputs.frame_from_msg(msg, seq)
        if frame is not None:
            self.frames_in += 1
        return frame

    # -- outputs ----------------------------------------------------------------------------------------------
    @property
    def path(self) -> PathBuffer:
        return self.results.path

    @property
    def faults(self) -> WarnOnce:
        return self.inputs.faults

    def dropped(self) -> int:
        """Images dropped unprocessed: by the push source (queue full), by the node (a newer frame won) and, once the
        run is over, those still queued (an aborted stop, or no node to send them to)."""
        if self.stats is None:
            return self.source.drops
        return self.source.counts()[1] + self.stats.camera.dropped_at_node

    def diagnostic_values(self) -> list[tuple[str, str]]:
        """Key/value pairs of /diagnostics: this side's counters, the node session's, both latencies."""
        session = self.node_status.get("sessions", {}).get(self.config.stream_id, {})
        values = [("backend", self.config.backend), ("node", self.config.node or "in-process"),
                  ("frames_in", str(self.frames_in)), ("results_out", str(self.results.results_out)),
                  ("dropped", str(self.dropped())), ("resets", str(self.results.resets)),
                  ("waiting_for_camera_info", str(self.inputs.waiting_for_info))]
        for key in ("frames", "drops", "errors", "session"):
            if key in session:
                values.append((f"node_{key}", str(session[key])))
        if "checkpoint" in session:
            values.append(("node_checkpoints", str(session["checkpoint"].get("written", 0))))
        values += [(f"latency_ms_{k}" if k != "n" else "latency_samples", str(v))
                   for k, v in self.latency.summary().items()]
        values += [(f"node_latency_ms_{k}", str(v)) for k, v in self.results.node_latency.summary().items()
                   if k != "n"]
        return values

    # -- the run ----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """End the input (signal handler safe): what is queued is still processed, flushed and published."""
        self.source.close()
        self._stopping.set()

    def abort(self) -> None:
        """Give up what the node still holds (ROS went down: nothing could be published)."""
        self.stop()
        self._abort.set()

    def _watch(self, stop: threading.Event, ros_ok: Callable[[], bool], done: threading.Event) -> None:
        """Close the input on `stop`, abort when ROS goes down first, refresh the node's status for /diagnostics."""
        next_status = 0.0
        while not done.wait(0.1):
            if stop.is_set():
                self.stop()
            if not ros_ok():
                self.abort()
            now = time.monotonic()
            if self._status_fn is not None and now >= next_status:
                next_status = now + STATUS_PERIOD_S
                try:
                    self.node_status = self._status_fn()
                except Exception as e:  # noqa: BLE001 - counted; /diagnostics keeps the last status it had
                    self.faults("node_status", "cannot read the reconstruction node's status: %s: %s",
                                type(e).__name__, e)

    def serve(self, publish: Callable[[Output], None], stop: threading.Event, ros_ok: Callable[[], bool],
              drain_s: float = 0.5) -> int:
        """Run the pipeline, publishing every result, until `stop` (SIGINT/SIGTERM) or ROS ends; returns the exit
        code (1 when results were lost or the node refused the stream).

        On `stop` the images already queued are processed, the backend is flushed and those results are published
        while ROS is still up; `drain_s` then lets the publishers' send threads empty. When ROS went down first
        (`rosnode kill`) nothing can be sent, and the rest is given up.
        """
        self.results.publish = publish
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(stop, ros_ok, done), name="recon-ros-watch",
                                   daemon=True)
        watcher.start()

        def on_status(fn: Callable[[], dict[str, Any]]) -> None:
            self._status_fn = fn

        cfg = self.config
        backend: str | Backend = self.backend if self.backend is not None else cfg.backend
        try:
            if self.remote is None:
                # A ROS camera that pauses keeps its map: the session never idles out. Only this process's camera
                # reaches the in-process node, so a restarted ROS node takes its restored stream over at once.
                options = {"session_idle_s": math.inf, "owner_timeout_s": 0.0, "checkpoint_every": cfg.checkpoint_every,
                           "state_dir": cfg.state_dir or None}
                self.stats = run_pipeline(self.source, backend, [self.results], mode="inproc",
                                          backend_options=cfg.backend_options, stream_id=cfg.stream_id,
                                          timeout_s=math.inf, abort=self._abort, node_options=options,
                                          on_status=on_status)
            else:
                self.stats = run_pipeline(self.source, cfg.backend, [self.results], mode="remote", node=self.remote,
                                          stream_id=cfg.stream_id, timeout_s=math.inf, stop=self._stopping,
                                          abort=self._abort, on_status=on_status)
        finally:
            done.set()
            watcher.join(2)
        if ros_ok() and self.results.last_result_at and time.monotonic() - self.results.last_result_at < drain_s:
            time.sleep(drain_s)
        faults = {**self.faults.counts, **self.stats.node_status.get("faults", {})}
        logger.info("recon ROS node stopping: %d frames in, %d results out, %d images dropped, faults %s",
                    self.frames_in, self.results.results_out, self.dropped(), faults)
        if self.stats.camera.stopped_on_error:
            logger.error("the reconstruction node refused the stream: %s", self.stats.camera.stopped_on_error)
            return 1
        return 1 if self.stats.results_lost else 0
