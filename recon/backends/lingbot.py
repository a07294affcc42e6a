"""`lingbot` backend: LingBot-Map (Robbyant; Apache-2.0 code) streaming with its bounded memory, or windowed.

Each frame is resized to the model grid (recon.models.preprocess fast path, "crop" mode, width `image_width`) and
pushed into a session:
- `mode="stream"` (default): `recon.models.lingbot_session.LingBotSession`. The first `num_scale_frames` frames
  are buffered and predicted together (their results leave with the last of them), then one result per frame. The
  aggregator attends to the anchor frames, the last `sliding_window` stored frames and the trajectory memory of
  evicted frames' special tokens; `keyframe_interval` > 1 stores only every N-th frame.
- `mode="windowed"`: `recon.models.lingbot_windows.LingBotWindowedSession`, for sequences past what one memory
  should hold: overlapping windows with fresh memories stitched by Sim(3); a frame leaves when its window's
  similarity is known, a window's last `overlap` frames with the next window (or at `flush`).

The world frame is the first camera of the session (windowed: of the first window), in the model's normalised scale
(`metric=False`); the world-to-camera pose encoding becomes `T_world_cam` here (recon.geometry.pose_encoding), with K
from the predicted fields of view at the model grid. Memory, per-frame time and the camera-head cache are bounded
(see the session's `trajectory_frames` / `camera_window`); `stats()` reports them. The session state is
checkpointable (`save_state` / `load_state`).

Options (recon.backends.configs.LingBotBackendConfig; unknown options are errors):
    weights, weights_name: checkpoint path, or the registry entry to use ("lingbot-map-long" default, "lingbot-map").
    model_config: "full" or "tiny" (random weights unless `weights`); random_init, seed: random weights.
    device, dtype, image_width, points: as for the `vggt` backend.
    mode: "stream" | "windowed".  keyframe_interval: 1 = every frame is a keyframe.
    keyframe_semantics: "skip" (non-keyframes not stored; default, the intended behaviour) | "store" (the reference's
        SDPA fallback). num_scale_frames, anchor_frames, sliding_window, trajectory, trajectory_frames,
        camera_window: the memory (recon.models.lingbot_session.LingBotStreamConfig).
    window_size, overlap_keyframes, overlap_size, window_alignment ("w2c" | "reference"): windowed mode
        (recon.models.lingbot_windows.LingBotWindowConfig; docs/lingbot.md explains the alignment).

Example (no downloads): `recon replay datasets/sample --backend lingbot --model-config tiny --mode windowed`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from recon.backends.base import BackendState
from recon.backends.configs import LingBotBackendConfig
from recon.backends.runtime import (
    FrameMeta,
    autocast_context,
    decode_pose,
    default_image_width,
    make_result,
    pick_autocast_dtype,
    pick_device,
    prepare_frame,
    to_uint8_image,
)
from recon.errors import BackendError, StateError
from recon.models.lingbot_session import SessionResetError
from recon.types import BackendStats, Frame, FrameResult

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class LingBotBackend:
    """One stream through a LingBot session (`reset` starts over)."""

    name = "lingbot"

    def __init__(self, model: Any, config: LingBotBackendConfig, *, device: torch.device,
                 autocast_dtype: torch.dtype) -> None:
        from recon.models.lingbot_session import LingBotSession
        from recon.models.lingbot_windows import LingBotWindowedSession

        self.model = model
        self.config = config
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.image_width = config.image_width or default_image_width(config.model_config)
        self._dtype = next(model.parameters()).dtype
        if config.mode == "windowed":
            self.session: Any = LingBotWindowedSession(model, config.stream_config(), config.window_config())
        else:
            self.session = LingBotSession(model, config.stream_config())
        self.reset()

    @property
    def stream_session(self) -> Any:
        """The `LingBotSession` doing the model calls (the current window's in windowed mode)."""
        return self.session.session if self.config.mode == "windowed" else self.session

    def reset(self) -> None:
        self.session.reset()
        self._pending: deque[tuple[FrameMeta, np.ndarray]] = deque()
        self._grid: tuple[int, int] | None = None
        self._frames_in = 0
        self._results_out = 0
        self._timings: dict[str, float] = {}

    def step(self, frame: Frame) -> list[FrameResult]:
        t0 = time.perf_counter()
        img = prepare_frame(frame, self.image_width, self.device).to(self._dtype)
        hw = (int(img.shape[-2]), int(img.shape[-1]))
        if self._grid is not None and hw != self._grid:
            raise BackendError(f"{self.name} backend, stream {frame.stream_id!r} seq {frame.seq}: frame "
                               f"{frame.width}x{frame.height} maps to a {hw[1]}x{hw[0]} grid, the session's is "
                               f"{self._grid[1]}x{self._grid[0]}; reset first")
        self._grid = hw
        self._frames_in += 1
        self._pending.append((FrameMeta(frame.stream_id, frame.seq, frame.t_ns), to_uint8_image(img)))
        t1 = time.perf_counter()
        try:
            with autocast_context(self.device, self.autocast_dtype):
                out = self.session.push(img)
        except SessionResetError as e:
            lost = [m.seq for m, _ in self._pending]
            self.reset()
            raise BackendError(f"{self.name} backend, stream {frame.stream_id!r}: {e}; frames {lost} were dropped "
                               "unpredicted and the next frame starts a new world frame") from e
        except BackendError as e:  # refused before anything changed (e.g. the resolution)
            self._pending.pop()
            self._frames_in -= 1
            raise BackendError(f"{self.name} backend, stream {frame.stream_id!r} seq {frame.seq}: {e}") from e
        t2 = time.perf_counter()
        results = self._results(out)
        if out:
            self._timings = {"preprocess_ms": 1000 * (t1 - t0), "model_ms": 1000 * (t2 - t1),
                             "convert_ms": 1000 * (time.perf_counter() - t2)}
            logger.debug("%s: %d result(s) at seq %d: %s", self.name, len(out), frame.seq, self._timings)
        return results

    def flush(self) -> list[FrameResult]:
        with autocast_context(self.device, self.autocast_dtype):
            out = self.session.flush()
        results = self._results(out)
        if self._pending:
            raise BackendError(f"{self.name} backend: {len(self._pending)} frames were not predicted at flush")
        return results

    def _results(self, frames: list[dict[str, Any]]) -> list[FrameResult]:
        results = []
        assert self._grid is not None or not frames
        for f in frames:
            meta, image = self._pending.popleft()
            T_world_cam, K = decode_pose(f["pose_enc"][0], self._grid)
            head = f.get("world_points")
            results.append(make_result(meta, T_world_cam, K, f["depth"][0, ..., 0].float().cpu().numpy(),
                                       f["depth_conf"][0].float().cpu().numpy(),
                                       None if head is None else head[0].float().cpu().numpy(), image,
                                       self.config.points))
        self._results_out += len(results)
        return results

    def stats(self) -> BackendStats:
        s = self.stream_session
        extra: dict[str, Any] = {
            "mode": self.config.mode, "keyframe_interval": self.config.keyframe_interval,
            "keyframe_semantics": self.config.keyframe_semantics, "pending_frames": len(self._pending),
            "cache_frames": len(s.memory.cache_frame_ids()), "trajectory_frames": len(s.memory.trajectory_frame_ids()),
            "trajectory_bound": s.trajectory_frames, "camera_window": s.camera_window,
            "camera_cache_entries": s.camera_cache_lengths()[0] if s.camera_caches else [],
            "rope_t_next": s.t_next,
        }
        if self.config.mode == "windowed":
            extra["window"] = self.session.window_index
        return BackendStats(frames_in=self._frames_in, results_out=self._results_out,
                            memory_bytes=self.session.nbytes(), tokens_cached=s.memory.num_tokens(),
                            timings_ms=dict(self._timings), extra=extra)

    # -- Checkpointable -----------------------------------------------------------------------------------------
    def save_state(self) -> BackendState:
        """The session (KV memory, trajectory memory, camera caches, counters) and the frames not yet emitted."""
        meta, arrays = self.session.state()
        arrays = {f"session.{k}": v for k, v in arrays.items()}
        pending = []
        for i, (m, image) in enumerate(self._pending):
            pending.append({"stream_id": m.stream_id, "seq": m.seq, "t_ns": m.t_ns})
            arrays[f"pending_image.{i}"] = image.copy()
        return BackendState(backend=self.name, version=STATE_VERSION, config=self.config.state_key(), arrays=arrays,
                            meta={"session": meta, "pending": pending, "grid": list(self._grid) if self._grid else None,
                                  "frames_in": self._frames_in, "results_out": self._results_out})

    def load_state(self, state: BackendState) -> None:
        """Continue from `save_state()` of a backend built with the same options (else StateError)."""
        if state.backend != self.name or state.version != STATE_VERSION:
            raise StateError(f"{self.name} backend: cannot load a {state.backend!r} state version {state.version} "
                             f"(expected {self.name!r} version {STATE_VERSION})")
        mine = self.config.state_key()
        if state.config != mine:
            diff = sorted(k for k in set(mine) | set(state.config) if mine.get(k) != state.config.get(k))
            raise StateError(f"{self.name} backend: the saved state was made with other options: {diff}")
        self.reset()
        arrays = {k: torch.as_tensor(v) for k, v in state.arrays.items()}
        try:
            self.session.load_state(state.meta["session"],
                                    {k[8:]: v for k, v in arrays.items() if k.startswith("session.")})
        except (KeyError, ValueError, RuntimeError) as e:
            self.reset()
            raise StateError(f"{self.name} backend: damaged session state ({e})") from e
        for i, m in enumerate(state.meta["pending"]):
            image = np.asarray(state.arrays[f"pending_image.{i}"], dtype=np.uint8)
            self._pending.append((FrameMeta(m["stream_id"], int(m["seq"]), int(m["t_ns"])), image))
        self._grid = tuple(state.meta["grid"]) if state.meta["grid"] else None
        self._frames_in, self._results_out = int(state.meta["frames_in"]), int(state.meta["results_out"])


def create(config: LingBotBackendConfig) -> LingBotBackend:
    """Backend factory (`--backend lingbot`); the options are recon.backends.configs.LingBotBackendConfig."""
    from recon.models.lingbot import build_lingbot

    dev = pick_device(config.device)
    model = build_lingbot(weights=config.weights, weights_name=config.weights_name, model_config=config.model_config,
                          random_init=config.random_init, seed=config.seed, device=dev)
    backend = LingBotBackend(model, config, device=dev, autocast_dtype=pick_autocast_dtype(config.dtype, dev))
    s = backend.stream_session
    logger.info("lingbot: %s mode, %d scale frames, anchors %d + window %d frames, trajectory %s, camera cache %s, "
                "keyframe interval %d (%s non-keyframes)%s", config.mode, config.num_scale_frames,
                s.config.anchors, config.sliding_window,
                f"<= {s.trajectory_frames} frames" if s.trajectory_frames else "unbounded (reference)",
                f"scale + {s.camera_window} keyframes" if s.camera_window else "unbounded (reference)",
                config.keyframe_interval, config.keyframe_semantics,
                f", windows of {backend.session.window_frames} frames overlapping by {backend.session.overlap}, "
                f"{config.window_alignment} alignment" if config.mode == "windowed" else "")
    return backend
