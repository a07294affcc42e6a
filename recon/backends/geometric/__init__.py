"""The weight-free `geometric` backend: RGB-D odometry or monocular keyframe visual odometry.

It is the default when no model weights are installed and the baseline in every comparison. The mode is
chosen from the first frame of a session: frames with depth go through `RgbdOdometry` (metric poses and
depth back-projected to world point maps), frames without depth through `MonoVO` (poses and points in one
arbitrary scale, see recon.backends.geometric.mono for what its point maps contain). RGB-D returns each
frame's result at once; monocular holds frames until its map is initialised and re-emits frames whose pose
the bundle adjustment revised (`is_update=True`, same `seq`; counted in `stats().extra["pose_updates"]`).
Frames without a pose (lost, held until the end of a stream) are emitted with `tracked=False`.

Invalid pixels (no depth, outside the monocular mesh) have depth 0, confidence 0 and NaN world points.

Options (keyword arguments of `create`):
    mode: "auto" (RGB-D when the frame has depth), "rgbd" or "mono" (ignore depth, e.g. to compare).
    K: 3x3 intrinsics used when frames carry none. Without either, monocular sessions self-calibrate the focal
        length from fx = fy = 0.8 * max(w, h), centred (recon.backends.geometric.selfcalib); RGB-D assumes it.
        `stats().extra["intrinsics"]` reports the value used and its source (summary.json).
    stride / max_points: results keep every `stride`-th pixel; without `stride`, the smallest stride giving
        at most `max_points` points per frame (default 20000: stride 2 at 320x240, 4 at 640x480).
    depth_max: metres; RGB-D depth beyond it is ignored.
    mono_points: "dense" (depth interpolated between tracked map points) or "sparse" (only grid cells holding
        a tracked map point).
    rgbd / mono: dicts of extra keyword arguments for RgbdOdometry / MonoVO.

Example:
    >>> from recon.backends import create_backend
    >>> backend = create_backend("geometric", max_points=5000)
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np

from recon.backends.configs import GeometricBackendConfig
from recon.backends.geometric.grid import choose_stride, default_intrinsics, depth_point_map, strided_K
from recon.errors import BackendError, ConfigError
from recon.types import BackendStats, Frame, FrameResult

logger = logging.getLogger(__name__)

_MODES = ("auto", "rgbd", "mono")


class GeometricBackend:
    """One session of the weight-free backend (one stream; `reset` starts a new one)."""

    name = "geometric"

    def __init__(self, *, mode: str = "auto", K: np.ndarray | None = None, stride: int | None = None,
                 max_points: int | None = 20000, depth_max: float = 8.0, mono_points: str = "dense",
                 rgbd: dict[str, Any] | None = None, mono: dict[str, Any] | None = None) -> None:
        if mode not in _MODES:
            raise ConfigError(f"geometric backend: mode must be one of {_MODES}, got {mode!r}")
        if mono_points not in ("dense", "sparse"):
            raise ConfigError(f"geometric backend: mono_points must be 'dense' or 'sparse', got {mono_points!r}")
        if stride is not None and int(stride) < 1:
            raise ConfigError(f"geometric backend: stride must be >= 1, got {stride!r}")
        if max_points is not None and int(max_points) < 1:
            raise ConfigError(f"geometric backend: max_points must be >= 1, got {max_points!r}")
        if depth_max <= 0:
            raise ConfigError(f"geometric backend: depth_max must be positive, got {depth_max!r}")
        self.mode = mode
        self.K_option = None if K is None else np.asarray(K, dtype=np.float64)
        if self.K_option is not None and self.K_option.shape != (3, 3):
            raise ConfigError(f"geometric backend: K must be 3x3, got shape {self.K_option.shape}")
        self.stride_option = stride
        self.max_points = max_points
        self.depth_max = float(depth_max)
        self.mono_points = mono_points
        self.rgbd_options = dict(rgbd or {})
        self.mono_options = dict(mono or {})
        self.reset()

    # -- Backend interface -------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the session: next frame starts a new world at its camera."""
        self._tracker: Any = None
        self._active_mode: str | None = None
        self._size: tuple[int, int] | None = None
        self._K: np.ndarray | None = None
        self._K_guessed = False
        self._stride = 1
        self._frames_in = 0
        self._results_out = 0
        self._timing_sum: dict[str, float] = defaultdict(float)
        self._timing_n: dict[str, int] = defaultdict(int)

    def step(self, frame: Frame) -> list[FrameResult]:
        """Track one frame; RGB-D returns its result at once, monocular may hold frames until initialised."""
        t0 = time.perf_counter()
        self._frames_in += 1
        if self._tracker is None:
            self._start(frame)
        elif (frame.width, frame.height) != self._size:
            raise BackendError(f"geometric backend: frame {frame.stream_id}/{frame.seq} is {frame.width}x"
                               f"{frame.height} but the session started at {self._size[0]}x{self._size[1]}; "
                               "call reset() before changing resolution")
        if self._active_mode == "rgbd":
            results = [self._step_rgbd(frame)]
        else:
            results = self._tracker.track(frame)
        self._time("step", t0)
        self._results_out += len(results)
        return results

    def flush(self) -> list[FrameResult]:
        """Emit monocular frames still held while waiting for initialisation (RGB-D holds none)."""
        if self._active_mode != "mono" or self._tracker is None:
            return []
        results = self._tracker.flush()
        self._results_out += len(results)
        return results

    def stats(self) -> BackendStats:
        """Counters, mean stage timings and tracker-specific extras (losses, keyframes, map size)."""
        extra: dict[str, Any] = {"mode": self._active_mode, "stride": self._stride}
        memory = 0
        if self._active_mode == "rgbd" and self._tracker is not None:
            t = self._tracker
            extra.update(tracking_losses=t.losses, keyframes=t.keyframes, reanchors=t.reanchors,
                         open3d_fallbacks=t.fallbacks, tracks=t.n_tracks, lost=t.lost_in_row > 0)
            K = self._K
            extra["intrinsics"] = {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]),
                                   "cy": float(K[1, 2]), "source": "assumed" if self._K_guessed else "given"}
            if self._size is not None:
                memory = self._size[0] * self._size[1] * 16  # keyframe colour + depth as float32
        elif self._active_mode == "mono" and self._tracker is not None:
            extra.update(self._tracker.counters())
            memory = self._tracker.memory_bytes()
        timings = {k: 1000.0 * self._timing_sum[k] / max(1, self._timing_n[k]) for k in self._timing_sum}
        return BackendStats(frames_in=self._frames_in, results_out=self._results_out, memory_bytes=memory,
                            tokens_cached=0, timings_ms=timings, extra=extra)

    # -- internals ---------------------------------------------------------------------------------------------

    def _time(self, stage: str, t0: float) -> None:
        self._timing_sum[stage] += time.perf_counter() - t0
        self._timing_n[stage] += 1

    def _start(self, frame: Frame) -> None:
        """Choose the mode, intrinsics and output grid from the session's first frame."""
        self._size = (frame.width, frame.height)
        self._K_guessed = False
        if frame.K is not None:
            self._K = frame.K
        elif self.K_option is not None:
            self._K = self.K_option
        else:
            self._K = default_intrinsics(frame.width, frame.height)
            self._K_guessed = True
            logger.info("geometric backend: no intrinsics for stream %s; starting from fx = fy = %.1f "
                        "(0.8 * max(w, h))%s", frame.stream_id, self._K[0, 0],
                        "" if frame.depth is not None and self.mode != "mono" else
                        ", to be self-calibrated from the first frames")
        self._stride = choose_stride(frame.width, frame.height, self.stride_option, self.max_points)
        use_rgbd = self.mode == "rgbd" or (self.mode == "auto" and frame.depth is not None)
        if use_rgbd:
            from recon.backends.geometric.rgbd import RgbdOdometry

            self._active_mode = "rgbd"
            self._tracker = RgbdOdometry(self._K, depth_max=self.depth_max, **self.rgbd_options)
        else:
            from recon.backends.geometric.mono import MonoVO

            self._active_mode = "mono"
            options = {"calibrate_focal": self._K_guessed, **self.mono_options}
            self._tracker = MonoVO(self._K, frame.width, frame.height, stride=self._stride,
                                   points=self.mono_points, **options)
        logger.info("geometric backend: %s mode for stream %s at %dx%d (output stride %d)", self._active_mode,
                    frame.stream_id, frame.width, frame.height, self._stride)

    def _step_rgbd(self, frame: Frame) -> FrameResult:
        if frame.depth is None:
            raise BackendError(f"geometric backend: frame {frame.stream_id}/{frame.seq} has no depth but the "
                               "session runs in RGB-D mode; call reset() or use mode='mono'")
        t0 = time.perf_counter()
        res = self._tracker.track(frame.image, frame.depth)
        self._time("odometry", t0)
        s = self._stride
        depth = frame.depth[::s, ::s].astype(np.float32)
        depth = np.where(np.isfinite(depth) & (depth > 0) & (depth < self.depth_max), depth, 0.0).astype(np.float32)
        K_out = strided_K(self._K, s)
        pts, conf = depth_point_map(depth, K_out, res.T_world_cam)
        # A lost frame's pose is a guess: `tracked=False` keeps it out of trajectories and maps.
        return FrameResult(frame.stream_id, frame.seq, frame.t_ns, res.T_world_cam, K_out, depth=depth,
                           confidence=conf, points_world=pts, metric=True,
                           image=np.ascontiguousarray(frame.image[::s, ::s]), tracked=bool(res.ok))


def create(config: GeometricBackendConfig) -> GeometricBackend:
    """Registry factory (recon.backends): `create_backend("geometric", **options)`; options: GeometricBackendConfig."""
    return GeometricBackend(**config.to_options())
