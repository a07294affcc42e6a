"""One call that runs camera -> reconstruction -> sinks with the real node classes.

`run_pipeline(source, backend, sinks, mode=...)`:

- `mode="inproc"`: the camera, reconstruction and viewer nodes run as threads of this process over
  `inproc://` (the embedded default of `recon replay` and `recon live`);
- `mode="tcp"`: the camera and reconstruction nodes run as separate processes (`python -m
  recon.nodes.<kind>_cli`, the same as `recon node <kind>`) over `tcp://` on loopback; results come back to
  this process over a SUB socket and go to the same sinks (`recon replay --distributed`).
- `mode="remote"`: an open source streams from this process to a reconstruction node that runs elsewhere
  (`node=RemoteNode(...)`, a `recon node recon`), and its results come back over a SUB socket (the ROS node's
  `~node`).

Both modes use raw (lossless) images by default and credit flow for recorded sources, so a
deterministic backend produces the same trajectory either way.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq

from recon.backends.base import Backend
from recon.backends.options import format_backend_options
from recon.errors import ConfigError, ReconError
from recon.nodes.camera_node import CameraNode, CameraNodeConfig, CameraStats
from recon.nodes.recon_node import ReconNode, ReconNodeConfig
from recon.nodes.sources import Source, open_source
from recon.nodes.transport import request, tune_allocator
from recon.nodes.viewer_node import ViewerNode, ViewerStats
from recon.sinks.base import call_hook

logger = logging.getLogger(__name__)


@dataclass
class PipelineStats:
    """What a pipeline run did: camera counters, results received, node status at the end.

    `results_lost`: frames accepted by the node whose results did not reach the sinks (the node's own count at
    stop plus what the result subscriber did not receive); a run that loses any should exit non-zero.
    """

    mode: str
    camera: CameraStats = field(default_factory=CameraStats)
    viewer: ViewerStats = field(default_factory=ViewerStats)
    node_status: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    stopped_on_error: str | None = None
    backend_s: float = 0.0
    results_lost: int = 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` (loopback by default) right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RemoteNode:
    """Endpoints of a reconstruction node running elsewhere (`recon node recon --bind --publish --control`)."""

    connect: str
    publish: str
    control: str


def run_pipeline(source: str | Source, backend: str | Backend, sinks: Iterable[Any] = (), *, mode: str = "inproc",
                 backend_options: dict[str, Any] | None = None, stream_id: str | None = None,
                 encoding: str = "raw", fps: float | None = None, queue_size: int = 8,
                 timeout_s: float = 3600.0, stop: threading.Event | None = None, max_frames: int | None = None,
                 stride: int = 1, on_error: str | None = None, close_sinks: bool = True,
                 strict: bool = False, keep_meta: bool = False, abort: threading.Event | None = None,
                 node: RemoteNode | None = None, node_options: dict[str, Any] | None = None,
                 on_status: Callable[[Callable[[], dict[str, Any]]], None] | None = None) -> PipelineStats:
    """Stream `source` through `backend` into `sinks` with the node classes; returns the run's counters.

    Args:
        source: a source spec (camera index, video, folder, dataset, bag, `pattern:N:WxH`) or an open Source
            (inproc only).
        backend: registry name (`backend_options` go to create_backend in the node), or, inproc only, a built
            Backend that serves the single stream.
        sinks: ResultSinks; closed before this returns unless `close_sinks` is False.
        mode: "inproc" (threads) or "tcp" (camera and reconstruction node as processes on loopback).
        stream_id: defaults to the source's name.
        timeout_s: overall bound; the run is stopped and ReconError raised when exceeded.
        stop: set it (from a signal handler or another thread) to end a live run cleanly (inproc): the camera
            stops, the node drains and flushes, every result reaches the sinks, however long that takes. Remote: it
            ends a wait for the node to come up; a stream ends when its source does.
        abort: set it (a second signal) to cut that wait short; `PipelineStats.results_lost` counts what was lost.
        max_frames, stride: send at most `max_frames` frames, every `stride`-th of a recorded source.
        on_error: dataset sources: "skip" or "stop" at a corrupt frame (see `PipelineStats.stopped_on_error`).
        strict: inproc: a backend exception ends the run and is re-raised (replay), instead of being counted.
        keep_meta: inproc: hand each frame's `meta` (ground truth for evaluation...) to the backend, beside the
            wire message that cannot carry it.
        node: mode="remote": the reconstruction node's endpoints (`backend` is then only a label).
        node_options: inproc: more ReconNodeConfig fields (state_dir, checkpoint_every, session_idle_s, ...).
        on_status: inproc and remote: called once the node serves, with a function returning its status (the
            control socket's map), so a front end can report it while the run goes on (the ROS node's /diagnostics).
    """
    tune_allocator()
    options = dict(backend_options or {})
    if stride < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    cam = _CameraOptions(stream_id, encoding, fps, max_frames, stride, on_error, close_sinks, keep_meta)
    if mode == "inproc":
        return _run_inproc(source, backend, list(sinks), options, cam, queue_size, timeout_s, stop, strict, abort,
                           dict(node_options or {}), on_status)
    if mode == "remote":
        if node is None or isinstance(source, str):
            raise ConfigError("mode='remote' needs node=RemoteNode(...) and an open source")
        return _run_remote(source, node, list(sinks), cam, timeout_s, stop, abort, on_status)
    if mode == "tcp":
        if not isinstance(backend, str):
            raise ConfigError("mode='tcp' needs a backend name: the backend is built in the node process")
        if not isinstance(source, str):
            raise ConfigError("mode='tcp' needs a source spec (a path or camera index), not an open source")
        return _run_tcp(source, backend, list(sinks), options, cam, queue_size, timeout_s)
    raise ConfigError(f"mode must be 'inproc' or 'tcp', got {mode!r}")


@dataclass
class _CameraOptions:
    stream_id: str | None
    encoding: str
    fps: float | None
    max_frames: int | None
    stride: int
    on_error: str | None
    close_sinks: bool
    keep_meta: bool = False

    def camera_config(self, source: Source, connect: str, **extra: Any) -> CameraNodeConfig:
        """The camera node's configuration for `source` streaming to `connect` (every mode's camera)."""
        return CameraNodeConfig(connect=connect, encoding=self.encoding,
                                stream_id=self.stream_id or getattr(source, "name", "cam0"),
                                fps=None if source.live else self.fps, max_frames=self.max_frames,
                                stride=self.stride, **extra)


def _run_inproc(source: str | Source, backend: str | Backend, sinks: list[Any], options: dict[str, Any],
                co: _CameraOptions, queue_size: int, timeout_s: float, stop: threading.Event | None,
                strict: bool, abort: threading.Event | None, node_options: dict[str, Any] | None = None,
                on_status: Callable[[Callable[[], dict[str, Any]]], None] | None = None) -> PipelineStats:
    t0 = time.perf_counter()
    ctx = zmq.Context()
    tag = f"{os.getpid()}-{id(sinks):x}"
    src = open_source(source, fps=co.fps, on_error=co.on_error) if isinstance(source, str) else source
    instance = None if isinstance(backend, str) else backend
    side: dict[tuple[str, int], dict[str, Any]] = {}
    lock = threading.Lock()

    def keep(frame: Any) -> None:
        with lock:
            side[(frame.stream_id, frame.seq)] = frame.meta

    def restore(frame: Any) -> None:
        with lock:
            frame.meta.update(side.pop((frame.stream_id, frame.seq), {}))

    name = backend if isinstance(backend, str) else str(getattr(backend, "name", type(backend).__name__))
    node = ReconNode(ReconNodeConfig(bind=f"inproc://ingest-{tag}", publish=f"inproc://results-{tag}",
                                     backend=name, backend_options=options, queue_size=queue_size,
                                     heartbeat_s=0.1, min_subscribers=1, backend_instance=instance,
                                     strict=strict, frame_hook=restore if co.keep_meta else None,
                                     **(node_options or {})), ctx)
    viewer = ViewerNode(f"inproc://results-{tag}", sinks, context=ctx, close_sinks=co.close_sinks)
    stats = PipelineStats("inproc")
    abort = abort or threading.Event()
    try:
        node.start()
        viewer.start()
        if not viewer.wait_connected(10):
            raise ReconError("in-process pipeline: the result subscriber did not connect within 10 s")
        if on_status is not None:
            on_status(node.status)
        cam = CameraNode(src, co.camera_config(src, f"inproc://ingest-{tag}", on_send=keep if co.keep_meta else None),
                         ctx)
        _run_bounded(cam, node, timeout_s, stop, abort)
        stats.camera = cam.stats
        stats.stopped_on_error = cam.stats.stopped_on_error
        stats.backend_s = sum(s.step_s_total for s in node.sessions.values())
        _stop_and_drain(node, viewer, abort, stats)
        stats.node_status = node.status()  # after the stop: final counts, latency of every session
        if node.failure is not None:
            raise node.failure
    finally:
        if abort.is_set():
            node.abort()
        node.stop()
        viewer.stop()
        src.close()
        _term(ctx)
    return _finish(stats, viewer, t0)


def _run_remote(source: Source, remote: RemoteNode, sinks: list[Any], co: _CameraOptions, timeout_s: float,
                stop: threading.Event | None, abort: threading.Event | None,
                on_status: Callable[[Callable[[], dict[str, Any]]], None] | None) -> PipelineStats:
    """Stream `source` to a node running elsewhere and feed `sinks` with its results until the source ends.

    The node keeps running afterwards: results its backend still holds (a windowed backend's last frames) stay with
    its session, which flushes them when it idles out."""
    t0 = time.perf_counter()
    ctx = zmq.Context()
    viewer = ViewerNode(remote.publish, sinks, context=ctx, close_sinks=co.close_sinks)
    stats = PipelineStats("remote")
    abort = abort or threading.Event()

    def status() -> dict[str, Any]:
        return request(ctx, remote.control, {"cmd": "status"}, timeout_s=5)

    try:
        viewer.start()
        deadline = time.monotonic() + timeout_s
        if not viewer.wait_connected(1.0):  # nodes may start in any order: wait for it, saying where we look
            logger.info("waiting for a reconstruction node publishing on %s (start `recon node recon`)",
                        remote.publish)
            while not viewer.wait_connected(0.5):
                if (stop is not None and stop.is_set()) or abort.is_set() or viewer.error is not None:
                    return _finish(stats, viewer, t0)
                if time.monotonic() > deadline:
                    raise ReconError(f"no heartbeat from a reconstruction node on {remote.publish} within "
                                     f"{timeout_s:.0f} s (is `recon node recon` running with that --publish?)")
        if on_status is not None:
            on_status(status)
        cam = CameraNode(source, co.camera_config(source, remote.connect), ctx)
        t = threading.Thread(target=cam.run, name="camera-node", daemon=True)
        t.start()
        while t.is_alive():  # the run ends with the source (a live one: close it, and what it holds is sent first)
            t.join(0.2)
            if abort.is_set() or time.monotonic() > deadline:
                cam.stop()
        stats.camera = cam.stats
        stats.stopped_on_error = cam.stats.stopped_on_error
        # Every acknowledged frame's results were published before its ack; they come over another connection,
        # so wait until the subscriber has been quiet for a moment.
        quiet_since, seen = time.monotonic(), viewer.received()
        while not abort.is_set() and time.monotonic() - quiet_since < 0.5 and viewer.error is None:
            time.sleep(0.05)
            if viewer.received() != seen:
                quiet_since, seen = time.monotonic(), viewer.received()
        try:
            stats.node_status = status()
        except TimeoutError as e:
            logger.warning("the reconstruction node's final status: %s", e)
    finally:
        viewer.stop()
        _term(ctx)
    return _finish(stats, viewer, t0)


def _term(ctx: zmq.Context) -> None:
    """Terminate the pipeline's context; a thread still stuck in a backend or sink after a forced stop must not
    hang the process, so the wait is bounded."""
    t = threading.Thread(target=ctx.term, name="zmq-term", daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        logger.warning("in-process pipeline: a thread still holds a socket after the stop; leaving it behind")


def _stop_and_drain(node: ReconNode, viewer: ViewerNode, abort: threading.Event, stats: PipelineStats) -> None:
    """Stop the node however long its sessions take to flush, then wait until the subscriber has every result.

    `abort` (a second Ctrl-C or SIGTERM) cuts both waits short; what was given up is counted in
    `stats.results_lost`."""
    stopper = threading.Thread(target=node.stop, name="pipeline-stop", daemon=True)
    stopper.start()
    t0 = time.monotonic()
    next_log = t0 + 10.0
    while True:
        try:
            if abort.is_set():
                node.abort()
            stopper.join(0.2)
            if not stopper.is_alive() and (viewer.wait_bye(node.node_id, timeout=0.2) or abort.is_set()
                                           or viewer.error is not None):
                break
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + 10.0
                logger.info("waiting for the last results to reach the outputs (%.0f s so far, %d received; "
                            "interrupt again to give them up)", time.monotonic() - t0, viewer.stats.results)
        except KeyboardInterrupt:
            logger.warning("interrupted again: forcing the stop")
            abort.set()
    lost = viewer.lost_from(node.node_id)
    stats.results_lost = node.results_lost if lost is None else lost
    if lost is None and not abort.is_set():
        logger.error("in-process pipeline: the reconstruction node's last message never arrived")
    if stats.results_lost:
        logger.error("%d result(s) lost: they never reached the outputs", stats.results_lost)


def _finish(stats: PipelineStats, viewer: Any, t0: float) -> PipelineStats:
    """Re-raise a fault of the result subscriber, else complete the run's counters."""
    if viewer.error is not None:
        raise viewer.error
    stats.viewer = viewer.stats
    stats.wall_s = time.perf_counter() - t0
    if viewer.stats.sink_errors:
        logger.error("outputs failed on some results: %s (see the log above)", viewer.stats.sink_errors)
    return stats


def _run_bounded(cam: CameraNode, node: ReconNode, timeout_s: float, stop: threading.Event | None,
                 abort: threading.Event) -> None:
    """Run the camera node in a thread until its source ends, `stop` is set or Ctrl-C (then shut down cleanly)."""
    t = threading.Thread(target=cam.run, name="camera-node", daemon=True)
    t.start()
    deadline = time.monotonic() + timeout_s
    try:
        while t.is_alive():
            t.join(0.2)
            if stop is not None and stop.is_set():
                cam.stop()
            if not node.running:
                cam.stop()
                t.join(5)
                if node.failure is not None:
                    raise node.failure
                raise ReconError("the reconstruction node stopped unexpectedly (see the log above)")
            if time.monotonic() > deadline:
                cam.stop()
                t.join(5)
                raise ReconError(f"pipeline did not finish within {timeout_s:.0f} s")
    except KeyboardInterrupt:
        logger.info("interrupted: stopping the camera, flushing the backend, closing outputs")
        cam.stop()
        t.join(5)


def node_command(kind: str, *args: str) -> list[str]:
    """argv that runs `recon node KIND ...` with this interpreter, through the node's own entry point
    (`python -m recon.nodes.KIND_cli`), which skips building the whole `recon` parser and starts faster."""
    return [sys.executable, "-m", f"recon.nodes.{kind}_cli", *args]


def _run_tcp(source: str, backend: str, sinks: list[Any], options: dict[str, Any], co: _CameraOptions,
             queue_size: int, timeout_s: float) -> PipelineStats:
    t0 = time.perf_counter()
    p_in, p_out, p_ctl = free_port(), free_port(), free_port()
    ep_in, ep_out, ep_ctl = (f"tcp://127.0.0.1:{p}" for p in (p_in, p_out, p_ctl))
    ctx = zmq.Context()
    viewer = ViewerNode(ep_out, sinks, context=ctx, close_sinks=co.close_sinks)
    stats = PipelineStats("tcp")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        recon_p = subprocess.Popen(node_command("recon", "--bind", ep_in, "--publish", ep_out, "--control", ep_ctl,
                                                "--backend", backend, "--queue-size", str(queue_size),
                                                "--heartbeat", "0.1", "--wait-subscribers", "1", "--no-state",
                                                *format_backend_options(options)))
        procs.append(recon_p)
        viewer.start()
        if not viewer.wait_connected(60):
            raise ReconError(f"reconstruction node process did not come up on {ep_out} within 60 s "
                             f"(exit code {recon_p.poll()})")
        status = request(ctx, ep_ctl, {"cmd": "status"}, timeout_s=10)
        cam_args = ["camera", "--source", source, "--connect", ep_in, "--encoding", co.encoding,
                    "--stride", str(co.stride)]
        for flag, value in (("--stream-id", co.stream_id), ("--fps", co.fps), ("--max-frames", co.max_frames),
                            ("--on-error", co.on_error)):
            if value:
                cam_args += [flag, str(value)]
        cam_p = subprocess.Popen(node_command(*cam_args))
        procs.append(cam_p)
        try:
            rc = cam_p.wait(timeout_s)
        except subprocess.TimeoutExpired as e:
            raise ReconError(f"camera node did not finish within {timeout_s:.0f} s") from e
        if rc == 1 and co.on_error == "stop":
            stats.stopped_on_error = "the camera node stopped at a corrupt frame (see its log above)"
        elif rc != 0:
            raise ReconError(f"camera node process failed with exit code {rc}")
        stats.node_status = request(ctx, ep_ctl, {"cmd": "status"}, timeout_s=10)
        request(ctx, ep_ctl, {"cmd": "shutdown"}, timeout_s=10)
        node_id = int(status["node"])
        t_wait = time.monotonic()
        while not viewer.wait_bye(node_id, timeout=5.0):
            if recon_p.poll() is not None and not viewer.wait_bye(node_id, timeout=2.0):
                break
            logger.info("distributed pipeline: waiting for the reconstruction node to flush (%.0f s)",
                        time.monotonic() - t_wait)
        lost = viewer.lost_from(node_id)
        if lost is None:
            raise ReconError(f"the reconstruction node process ended (exit code {recon_p.poll()}) without its last "
                             "message: results may be lost")
        stats.results_lost = lost
        recon_p.wait(30)
    finally:
        for p in procs:
            stop_process(p, 10)
        viewer.stop()
        ctx.term()
    return _finish(stats, viewer, t0)


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 20.0) -> int:
    """SIGTERM a node process (a clean stop), SIGKILL it when it has not exited after `timeout_s`; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def run_replay_distributed(sequence: str, backend: str, sink: Any, *, backend_options: dict[str, Any] | None = None,
                           max_frames: int | None = None, stride: int = 1, on_error: str | None = None) -> Any:
    """`recon replay --distributed`: the replay through node processes on loopback; returns replay's LoopStats.

    The caller's `sink` (replay's SinkGroup) gets every result and stays open (replay closes its outputs).
    Frames are sent raw and losslessly, so a deterministic backend gives the in-process trajectory.
    """
    from recon.sinks.loop_stats import LoopStats

    p = run_pipeline(sequence, backend, [sink], mode="tcp", backend_options=backend_options, max_frames=max_frames,
                     stride=stride, on_error=on_error, close_sinks=False)
    return LoopStats(frames_in=int(p.node_status.get("frames", 0)), results_out=p.viewer.results + p.viewer.updates,
                     metric=p.viewer.metric, wall_s=p.wall_s, stopped_on_error=p.stopped_on_error,
                     results_lost=p.results_lost + sum(p.viewer.sink_errors.values()),
                     node_status=p.node_status)


class _SequenceSource:
    """A recon.datasets Sequence seen as a recorded camera-node source (the caller keeps and closes it)."""

    live = False
    drops = 0

    def __init__(self, sequence: Any) -> None:
        self.sequence = sequence
        self.name = str(getattr(sequence, "name", "sequence"))
        self.camera_info = getattr(sequence, "camera_info", None)

    def __iter__(self) -> Any:
        return iter(self.sequence)

    def close(self) -> None:
        pass


def run_replay_inproc(sequence: Any, backend: Backend, sink: Any, *, max_frames: int | None = None,
                      stride: int = 1, on_frame: Any = None) -> Any:
    """`recon replay` through the node classes as threads over inproc://; returns replay's LoopStats.

    `sequence` is an open recon.datasets Sequence and `backend` the replay's own backend (its stats stay with
    the caller). A backend exception ends the run and propagates, as in the direct loop. `on_frame(stats)` is
    called once per result (progress bars).
    """
    from recon.sinks.loop_stats import LoopStats

    loop = LoopStats()

    class _Progress:
        name = str(getattr(sink, "name", "outputs"))

        def on_result(self, result: Any) -> None:
            sink.on_result(result)
            if on_frame is not None:
                on_frame(loop)

        def on_segment(self, *args: Any) -> None:
            call_hook(sink, "on_segment", *args)

        def on_latency(self, *args: Any) -> None:
            call_hook(sink, "on_latency", *args)

        def close(self) -> None:
            pass

    p = run_pipeline(_SequenceSource(sequence), backend, [_Progress()], mode="inproc", max_frames=max_frames,
                     stride=stride, close_sinks=False, strict=True, keep_meta=True)
    loop.frames_in = int(p.node_status.get("frames", 0))
    loop.frames_dropped_by_stride = p.camera.skipped_by_stride
    loop.results_out = p.viewer.results + p.viewer.updates
    loop.metric = p.viewer.metric
    loop.wall_s = p.wall_s
    loop.timings_s["backend"] = p.backend_s
    loop.stopped_on_error = p.stopped_on_error
    loop.results_lost = p.results_lost + sum(p.viewer.sink_errors.values())
    loop.node_status = p.node_status
    return loop
