"""`RerunLogger`: a result sink that draws FrameResults of any number of streams in Rerun.

Per result, on two timelines (`seq` sequence and capture time `t_ns`): the camera pose, pinhole and
JPEG-compressed image, depth, this frame's points, the trajectory so far, and time series (results per second,
capture-to-result latency, tracking state, and the backend's memory and cached tokens when a `backend_stats`
callable is given); every `map_every` frames the voxel-downsampled map of all points. Each stream's camera
frustum and trajectory have their own colour. Entity paths are listed in `recon.viewer.blueprint`. The logger only
logs into a `RecordingStream` it is given; where the data goes (file, viewer, web) is `recon.viewer.output`'s
business, so the viewer node and `recon replay` share this class unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import rerun as rr

from recon.errors import ConfigError
from recon.sinks.points import (
    DEFAULT_SELECTION,
    PointSelection,
    RevisableCloud,
    auto_voxel_size,
    result_points_hw3,
    select_points,
)
from recon.types import BackendStats, FrameResult
from recon.viewer.blueprint import WORLD, build_blueprint, stats_root, stream_root

logger = logging.getLogger(__name__)

TIMELINE_SEQ = "seq"
TIMELINE_TIME = "t_ns"

# Frustum and trajectory colour of the n-th stream (saturated, unlike the scene's colours).
STREAM_COLOURS = ((255, 0, 200), (0, 210, 255), (255, 170, 0), (120, 255, 0), (170, 90, 255), (255, 60, 60))
# A capture stamp further than this from the wall clock is on another clock (recorded data): no latency then.
_LATENCY_PLAUSIBLE_NS = 3600 * 10**9


@dataclass
class _StreamState:
    """What the logger remembers per stream: camera centres by seq, the last pinhole, the map."""

    centres: dict[int, np.ndarray] = field(default_factory=dict)
    last_seq: int = -1
    last_t_ns: int = 0
    pinhole_key: tuple | None = None
    frames: int = 0
    map: RevisableCloud | None = None
    map_moved: bool = False  # pose revisions moved map points since the map was last logged
    colour: tuple[int, int, int] = STREAM_COLOURS[0]
    last_wall: float | None = None
    fps: float = 0.0
    clear: bool = False  # a new world segment: clear the subtree before the next result
    intrinsics: str | None = None  # the backend's last reported intrinsics line (logged when it changes)


class RerunLogger:
    """Logs results into `recording`; one entity subtree per stream (`world/<stream_id>/...`).

    Args:
        recording: where to log (see `recon.viewer.open_recording`).
        stream_ids: streams known up front (the blueprint is built for them and re-sent when others appear).
        selection: thinning of each frame's points (confidence quantile, stride, cap).
        jpeg_quality: images are JPEG-compressed to keep recordings small.
        log_depth / log_images: switch those layers off for bandwidth.
        map_every: refresh `world/<stream>/map` every this many frames (0: never).
        map_voxel_size: voxel of the map (None: 1% of the first frame's median depth).
        map_revisable_points: map points kept per frame so pose revisions (loop closure) can move them.
        max_2d_panels: cap on 2-D panels in the blueprint.
        world_axes: ViewCoordinates of `world` ("RDF": poses relative to an OpenCV camera, the usual case).
        trajectory_block: frames per trajectory segment entity (bounds what each frame re-logs).
        backend_stats: returns the backend's BackendStats (memory and tokens plots); None: those plots stay empty.
        plots: time-series plots in the blueprint; collapse_panels: hide the viewer's side panels.
    """

    name = "rerun"

    def __init__(self, recording: rr.RecordingStream, *, stream_ids: Sequence[str] = (),
                 selection: PointSelection = DEFAULT_SELECTION,
                 jpeg_quality: int = 75, log_depth: bool = True, log_images: bool = True, map_every: int = 10,
                 map_voxel_size: float | None = None, max_2d_panels: int = 4, world_axes: str = "RDF",
                 trajectory_block: int = 200, backend_stats: Callable[[], BackendStats] | None = None,
                 plots: bool = True, collapse_panels: bool = False, map_revisable_points: int = 2_000_000) -> None:
        self.recording = recording
        self.selection = selection
        self.jpeg_quality = int(jpeg_quality)
        self.log_depth = log_depth
        self.log_images = log_images
        self.map_every = int(map_every)
        self.map_voxel_size = map_voxel_size
        self.map_revisable_points = int(map_revisable_points)
        self.max_2d_panels = max_2d_panels
        if int(trajectory_block) < 1:
            raise ConfigError(f"trajectory_block must be >= 1, got {trajectory_block!r}")
        self.trajectory_block = int(trajectory_block)
        self.backend_stats = backend_stats
        self.plots = plots
        self.collapse_panels = collapse_panels
        self._streams: dict[str, _StreamState] = {}
        self._stream_order: list[str] = list(dict.fromkeys(stream_ids))
        self._lock = threading.Lock()
        self._closed = False
        self.results_logged = 0
        # Facts that never change are static, so they hold at every time of every timeline.
        axes = getattr(rr.ViewCoordinates, world_axes.upper(), None)
        if axes is None:
            raise ConfigError(f"world_axes must name rerun ViewCoordinates such as 'RDF' or 'RUB', got {world_axes!r}")
        recording.log(WORLD, axes, static=True)
        if self._stream_order:
            self._send_blueprint()

    @property
    def stream_ids(self) -> list[str]:
        return list(self._stream_order)

    def _send_blueprint(self) -> None:
        blueprint = build_blueprint(self._stream_order, max_2d_panels=self.max_2d_panels, plots=self.plots,
                                    collapse_panels=self.collapse_panels)
        self.recording.send_blueprint(blueprint, make_active=True, make_default=True)

    def _state(self, stream_id: str) -> _StreamState:
        state = self._streams.get(stream_id)
        if state is None:
            if stream_id not in self._stream_order:
                self._stream_order.append(stream_id)
                self._send_blueprint()
                logger.info("new stream %r in the viewer", stream_id)
            colour = STREAM_COLOURS[self._stream_order.index(stream_id) % len(STREAM_COLOURS)]
            state = self._streams[stream_id] = _StreamState(colour=colour)
        return state

    def _set_time(self, seq: int, t_ns: int) -> None:
        self.recording.set_time(TIMELINE_SEQ, sequence=int(seq))
        self.recording.set_time(TIMELINE_TIME, timestamp=np.datetime64(int(t_ns), "ns"))

    def on_result(self, result: FrameResult) -> None:
        with self._lock:
            self._log(result)

    def _log(self, result: FrameResult) -> None:
        rec = self.recording
        state = self._state(result.stream_id)
        root = stream_root(result.stream_id)
        T = result.T_world_cam
        self._set_time(result.seq, result.t_ns)
        if state.clear:
            rec.log(root, rr.Clear(recursive=True))
            state.clear = False
        if not result.tracked:
            # No pose: nothing to place in 3-D (the placeholder pose would draw a wrong camera); the plot says so.
            self._log_stats(result, state)
            self.results_logged += 1
            return
        # T_world_cam maps camera points into the world: the parent (world) from the child (camera).
        rec.log(f"{root}/cam", rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3],
                                              relation=rr.TransformRelation.ParentFromChild))
        hw = self._grid_hw(result)
        if hw is not None:
            key = (hw, tuple(np.round(result.K, 6).ravel()))
            if key != state.pinhole_key:
                # Intrinsics are logged when they change only; OpenCV camera axes are RDF.
                rec.log(f"{root}/cam/image", rr.Pinhole(image_from_camera=result.K, resolution=[hw[1], hw[0]],
                                                        camera_xyz=rr.ViewCoordinates.RDF, color=state.colour))
                state.pinhole_key = key
        if result.is_update and result_points_hw3(result) is None:
            # A pose-only revision (recon.map's loop closure): move the camera, its path and its map points.
            self._revise_pose(root, state, result)
            self.results_logged += 1
            return
        if self.log_images and result.image is not None:
            rec.log(f"{root}/cam/image", rr.Image(np.ascontiguousarray(result.image)).compress(self.jpeg_quality))
        if self.log_depth and result.depth is not None:
            rec.log(f"{root}/cam/image/depth", rr.DepthImage(np.asarray(result.depth, np.float32), meter=1.0))
        xyz, rgb = select_points(result, self.selection)
        rec.log(f"{root}/points", rr.Points3D(xyz, colors=rgb, radii=rr.Radius.ui_points(1.5)))

        state.centres[result.seq] = T[:3, 3].copy()
        if result.seq >= state.last_seq:
            state.last_seq, state.last_t_ns = result.seq, result.t_ns
        elif result.is_update:
            # A revised past pose: redraw the path at the newest time so the correction is visible from now on.
            self._set_time(state.last_seq, state.last_t_ns)
        block = result.seq // self.trajectory_block
        self._log_trajectory_block(root, state, block)
        if result.is_update and result.seq % self.trajectory_block == self.trajectory_block - 1:
            self._log_trajectory_block(root, state, block + 1)  # the next block starts at this centre

        if self.map_every > 0:
            self._add_to_map(state, result, xyz, rgb)
            if not result.is_update:
                state.frames += 1
                if state.frames % self.map_every == 0 or state.map_moved:
                    self._log_map(root, state)
        if not result.is_update:
            self._set_time(result.seq, result.t_ns)
            self._log_stats(result, state)
        self.results_logged += 1

    def _log_stats(self, result: FrameResult, state: _StreamState) -> None:
        """Time series of the stream at the result's time: rate, latency, tracking, backend memory and tokens."""
        rec = self.recording
        stats = stats_root(result.stream_id)
        now = time.perf_counter()
        if state.last_wall is not None:
            rate = 1.0 / max(now - state.last_wall, 1e-6)
            state.fps = rate if state.fps == 0 else 0.8 * state.fps + 0.2 * rate
            rec.log(f"{stats}/fps", rr.Scalars(state.fps))
        state.last_wall = now
        latency_ns = time.time_ns() - int(result.t_ns)
        if 0 <= latency_ns < _LATENCY_PLAUSIBLE_NS:
            rec.log(f"{stats}/latency_ms", rr.Scalars(latency_ns / 1e6))
        rec.log(f"{stats}/tracked", rr.Scalars(1.0 if result.tracked else 0.0))
        if self.backend_stats is not None:
            b = self.backend_stats()
            rec.log(f"{stats}/memory_mb", rr.Scalars(b.memory_bytes / 2**20))
            if b.tokens_cached:
                rec.log(f"{stats}/tokens_k", rr.Scalars(b.tokens_cached / 1000))
            intr = (b.extra or {}).get("intrinsics")
            if isinstance(intr, dict):
                line = (f"intrinsics fx {intr.get('fx', float('nan')):.1f} fy {intr.get('fy', float('nan')):.1f} "
                        f"cx {intr.get('cx', float('nan')):.1f} cy {intr.get('cy', float('nan')):.1f} "
                        f"({intr.get('source', 'unknown source')})")
                if line != state.intrinsics:  # the value and where it came from, e.g. when self-calibrated
                    rec.log(f"{stats}/intrinsics", rr.TextLog(line, level=rr.TextLogLevel.INFO))
                    state.intrinsics = line

    def _log_trajectory_block(self, root: str, state: _StreamState, block: int) -> None:
        """The path is cut into blocks of `trajectory_block` frames, each re-logged only while it grows (or is
        revised), so a long session logs O(frames x block) points instead of O(frames^2)."""
        first = block * self.trajectory_block
        seqs = [s for s in range(first - 1, first + self.trajectory_block) if s in state.centres]
        if len(seqs) < 2 and first not in state.centres:
            return
        centres = np.array([state.centres[s] for s in seqs], dtype=np.float32)
        self.recording.log(f"{root}/trajectory/{block}", rr.LineStrips3D([centres], radii=rr.Radius.ui_points(2.0),
                                                                          colors=[state.colour]))

    @staticmethod
    def _grid_hw(result: FrameResult) -> tuple[int, int] | None:
        for arr in (result.image, result.depth, result.points_world, result.confidence):
            if arr is not None:
                return int(np.shape(arr)[0]), int(np.shape(arr)[1])
        return None

    def _add_to_map(self, state: _StreamState, result: FrameResult, xyz: np.ndarray, rgb: np.ndarray | None) -> None:
        if state.map is None:
            voxel = self.map_voxel_size or auto_voxel_size(result)
            if voxel is None:
                return
            state.map = RevisableCloud(voxel, revisable_points=self.map_revisable_points)
        state.map.put(result.seq, result.T_world_cam, xyz, rgb)

    def _revise_pose(self, root: str, state: _StreamState, result: FrameResult) -> None:
        """Redraw the path with the revised centre (at the newest time) and move the frame's map points; the map
        is re-logged with the next frame, so a burst of revisions after a loop closure costs one map refresh."""
        state.centres[result.seq] = result.T_world_cam[:3, 3].copy()
        self._set_time(state.last_seq, state.last_t_ns)
        block = result.seq // self.trajectory_block
        self._log_trajectory_block(root, state, block)
        if result.seq % self.trajectory_block == self.trajectory_block - 1:
            self._log_trajectory_block(root, state, block + 1)
        if state.map is not None and state.map.move(result.seq, result.T_world_cam):
            state.map_moved = True

    def _log_map(self, root: str, state: _StreamState) -> None:
        if state.map is None:
            return
        xyz, rgb = state.map.points()
        state.map_moved = False
        self._set_time(state.last_seq, state.last_t_ns)
        colours = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
        self.recording.log(f"{root}/map", rr.Points3D(xyz.astype(np.float32), colors=colours,
                                                      radii=rr.Radius.ui_points(1.0)))

    def on_segment(self, stream_id: str, segment: int, reason: str) -> None:
        """The stream's world frame changed: its subtree is cleared (recursively) at the time of its next result,
        and its path and map are forgotten, so the new world frame is drawn from scratch, never on top of the
        old one."""
        with self._lock:
            old = self._state(stream_id)
            self._streams[stream_id] = _StreamState(colour=old.colour, clear=True)
            logger.info("stream %s: new world segment %d (%s): its entities are cleared", stream_id, segment, reason)

    def on_latency(self, stream_id: str, seq: int, t_ns: int, latency_ms: float) -> None:
        """The node's capture-to-publish latency of one result: `stats/<stream>/publish_latency_ms`, plotted with the
        capture-to-viewer latency (both on the capture clock, so they also hold for recorded data)."""
        with self._lock:
            self._set_time(seq, t_ns)
            self.recording.log(f"{stats_root(stream_id)}/publish_latency_ms", rr.Scalars(float(latency_ms)))

    def close(self) -> None:
        """Logs each stream's final map; the recording itself is closed by its owner."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.map_every > 0:
                for stream_id, state in self._streams.items():
                    if state.frames % self.map_every or state.map_moved:
                        self._log_map(stream_root(stream_id), state)
