"""`RerunLogger`: a result sink that draws FrameResults of any number of streams in Rerun.

Per result, on two timelines (`seq` sequence and capture time `t_ns`): the camera pose, pinhole and
JPEG-compressed image, depth, this frame's points, and the trajectory so far; every `map_every` frames the
voxel-downsampled map of all points. Entity paths are listed in `recon.viewer.blueprint`. The logger only
logs into a `RecordingStream` it is given; where the data goes (file, viewer, web) is `recon.viewer.output`'s
business, so the viewer node and `recon replay` share this class unchanged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import rerun as rr

from recon.errors import ConfigError
from recon.sinks.points import DEFAULT_SELECTION, PointSelection, VoxelAccumulator, auto_voxel_size, select_points
from recon.types import FrameResult
from recon.viewer.blueprint import WORLD, build_blueprint, stream_root

logger = logging.getLogger(__name__)

TIMELINE_SEQ = "seq"
TIMELINE_TIME = "t_ns"
LATENCY = "latency"
"""Root of the per-stream capture-to-publish latency scalars (milliseconds)."""


@dataclass
class _StreamState:
    """What the logger remembers per stream: camera centres by seq, the last pinhole, the map."""

    centres: dict[int, np.ndarray] = field(default_factory=dict)
    last_seq: int = -1
    last_t_ns: int = 0
    pinhole_key: tuple | None = None
    frames: int = 0
    map: VoxelAccumulator | None = None
    clear: bool = False  # a new world segment: clear the subtree before the next result


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
        max_2d_panels: cap on 2-D panels in the blueprint.
        world_axes: ViewCoordinates of `world` ("RDF": poses relative to an OpenCV camera, the usual case).
        trajectory_block: frames per trajectory segment entity (bounds what each frame re-logs).
    """

    name = "rerun"

    def __init__(self, recording: rr.RecordingStream, *, stream_ids: Sequence[str] = (),
                 selection: PointSelection = DEFAULT_SELECTION,
                 jpeg_quality: int = 75, log_depth: bool = True, log_images: bool = True, map_every: int = 10,
                 map_voxel_size: float | None = None, max_2d_panels: int = 4, world_axes: str = "RDF",
                 trajectory_block: int = 200) -> None:
        self.recording = recording
        self.selection = selection
        self.jpeg_quality = int(jpeg_quality)
        self.log_depth = log_depth
        self.log_images = log_images
        self.map_every = int(map_every)
        self.map_voxel_size = map_voxel_size
        self.max_2d_panels = max_2d_panels
        if int(trajectory_block) < 1:
            raise ConfigError(f"trajectory_block must be >= 1, got {trajectory_block!r}")
        self.trajectory_block = int(trajectory_block)
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
        blueprint = build_blueprint(self._stream_order, max_2d_panels=self.max_2d_panels)
        self.recording.send_blueprint(blueprint, make_active=True, make_default=True)

    def _state(self, stream_id: str) -> _StreamState:
        state = self._streams.get(stream_id)
        if state is None:
            state = self._streams[stream_id] = _StreamState()
            if stream_id not in self._stream_order:
                self._stream_order.append(stream_id)
                self._send_blueprint()
                logger.info("new stream %r in the viewer", stream_id)
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
        # T_world_cam maps camera points into the world: the parent (world) from the child (camera).
        rec.log(f"{root}/cam", rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3],
                                              relation=rr.TransformRelation.ParentFromChild))
        hw = self._grid_hw(result)
        if hw is not None:
            key = (hw, tuple(np.round(result.K, 6).ravel()))
            if key != state.pinhole_key:
                # Intrinsics are logged when they change only; OpenCV camera axes are RDF.
                rec.log(f"{root}/cam/image", rr.Pinhole(image_from_camera=result.K, resolution=[hw[1], hw[0]],
                                                        camera_xyz=rr.ViewCoordinates.RDF))
                state.pinhole_key = key
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

        if self.map_every > 0 and not result.is_update:
            self._add_to_map(state, result, xyz, rgb)
            state.frames += 1
            if state.frames % self.map_every == 0:
                self._log_map(root, state)
        self.results_logged += 1

    def _log_trajectory_block(self, root: str, state: _StreamState, block: int) -> None:
        """The path is cut into blocks of `trajectory_block` frames, each re-logged only while it grows (or is
        revised), so a long session logs O(frames x block) points instead of O(frames^2)."""
        first = block * self.trajectory_block
        seqs = [s for s in range(first - 1, first + self.trajectory_block) if s in state.centres]
        if len(seqs) < 2 and first not in state.centres:
            return
        centres = np.array([state.centres[s] for s in seqs], dtype=np.float32)
        self.recording.log(f"{root}/trajectory/{block}", rr.LineStrips3D([centres], radii=rr.Radius.ui_points(2.0)))

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
            state.map = VoxelAccumulator(voxel)
        state.map.add(xyz, rgb)

    def _log_map(self, root: str, state: _StreamState) -> None:
        if state.map is None:
            return
        xyz, rgb = state.map.points()
        self._set_time(state.last_seq, state.last_t_ns)
        colours = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
        self.recording.log(f"{root}/map", rr.Points3D(xyz.astype(np.float32), colors=colours,
                                                      radii=rr.Radius.ui_points(1.0)))

    def on_segment(self, stream_id: str, segment: int, reason: str) -> None:
        """The stream's world frame changed: its subtree is cleared (recursively) at the time of its next result,
        and its path and map are forgotten, so the new world frame is drawn from scratch, never on top of the
        old one."""
        with self._lock:
            self._streams[stream_id] = _StreamState(clear=True)
            logger.info("stream %s: new world segment %d (%s): its entities are cleared", stream_id, segment, reason)

    def on_latency(self, stream_id: str, seq: int, t_ns: int, latency_ms: float) -> None:
        """Capture-to-publish latency of one result, as a time series `latency/<stream>` (milliseconds)."""
        with self._lock:
            self._set_time(seq, t_ns)
            self.recording.log(f"{LATENCY}/{rr.escape_entity_path_part(stream_id)}", rr.Scalars(float(latency_ms)))

    def close(self) -> None:
        """Logs each stream's final map; the recording itself is closed by its owner."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.map_every > 0:
                for stream_id, state in self._streams.items():
                    if state.frames % self.map_every:
                        self._log_map(stream_root(stream_id), state)
