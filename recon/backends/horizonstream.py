"""`horizonstream` backend: HorizonStream streaming in chunks with live online motion averaging, metric scale.

Each frame is resized to the model grid (recon.models.preprocess fast path, "crop" mode: width `image_width`,
height rounded to a multiple of 14) and pushed into a `HorizonStreamSession` (recon.models.horizonstream_session):
the first `window_size` frames form chunk 0, then every `sliding_size` frames form a chunk (1 = per frame). After
each chunk, online motion averaging fixes the absolute pose of every frame of the chunk, so `step` returns the
frames of a chunk when that chunk completes (the first ones after a window; with sliding size 1, one per frame from
then on) and `flush` returns the rest. Memory is constant: rolling Win-1-frame K/V caches, the linear-attention and
short-conv states, and the frames of the chunk being filled.

Conventions at this boundary: the model's world-to-camera poses become `T_world_cam` (float64, rotation projected
onto SO(3) to remove float32 rounding); motion averaging's world is the camera of the first window's last frame,
and we re-base it on the first frame's camera (as the reference's camera maps do), which is known as soon as the
first window is averaged; K comes from the fields of view
the frame's own window slot predicts (principal point at the grid centre); depth and translations carry the
predicted metric scale, so results are `metric=True`.

Options (keyword arguments of `create`):
    weights: checkpoint path (HorizonStream.pt); default: the installed `horizonstream` entry
        (`recon weights pull horizonstream`).
    model_config: "full" (published size) or "tiny" (the golden fixture's size, random weights unless `weights`).
    device: "auto" (cuda when available), "cpu", "cuda", ...
    dtype: compute dtype (autocast): "auto" (bf16 on CUDA, fp32 elsewhere), "fp32", "bf16", "fp16".
    sliding_size: frames per chunk after the first (default 1: per-frame streaming; the paper used 21).
    window_size: frames per window (default: the model's, 10 at full size, 4 tiny).
    image_width: model input width (default 518; 70 for the tiny model, the fixture's).
    seed: random-init seed and the seed of motion averaging's explicit generator.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from recon.backends import snapshot
from recon.backends.base import BackendState, spawn_sharing_model
from recon.backends.configs import HorizonStreamBackendConfig
from recon.backends.runtime import (
    FrameMeta,
    make_result,
    pick_autocast_dtype,
    pick_device,
    prepare_frame,
    to_uint8_image,
)
from recon.errors import BackendError
from recon.geometry.pose_encoding import guard_fov, intrinsics_from_fov
from recon.types import BackendStats, Frame, FrameResult

logger = logging.getLogger(__name__)

TINY_IMAGE_WIDTH = 70


def session_frame_to_pose(T_cam_world_34: torch.Tensor, fov_hw: torch.Tensor, image_hw: tuple[int, int]
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(T_world_cam 4x4, K 3x3) float64 from a world-to-camera [3,4] pose and (fov_h, fov_w) in radians.

    The rotation is projected onto SO(3) (SVD) in float64 before inverting; degenerate fields of view (possible
    with random weights: the FoV passes a ReLU) are clamped (recon.geometry.pose_encoding.guard_fov).
    """
    T = T_cam_world_34.detach().to(torch.float64).cpu()
    U, _, Vh = torch.linalg.svd(T[:, :3])
    R = U @ Vh
    if torch.linalg.det(R) < 0:
        R = U @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)) @ Vh
    T_world_cam = np.eye(4)
    T_world_cam[:3, :3] = R.T.numpy()
    T_world_cam[:3, 3] = -(R.T @ T[:, 3]).numpy()
    K = intrinsics_from_fov(guard_fov(fov_hw.detach().to(torch.float64).cpu()), image_hw)
    return T_world_cam, K.numpy()


class HorizonStreamBackend:
    """One stream through a HorizonStream session (`reset` starts a new one).

    Checkpointable: the state is the session's carried K/V and KDA states, its pending frames, the online
    motion-averaging state with its generator, and this adapter's pending results and world re-basing.
    """

    name = "horizonstream"
    STATE_VERSION = 1

    def __init__(self, model: Any, *, device: torch.device, autocast_dtype: torch.dtype, image_width: int,
                 sliding_size: int = 1, window_size: int | None = None, seed: int = 0) -> None:
        from recon.models.horizonstream_session import HorizonStreamSession

        self.model = model
        self.device = device
        self.image_width = image_width
        self._dtype = next(model.parameters()).dtype
        self.session = HorizonStreamSession(
            model, window_size=window_size, sliding_size=sliding_size, seed=seed,
            autocast_dtype=None if autocast_dtype == torch.float32 else autocast_dtype)
        self.reset()

    def reset(self) -> None:
        self.session.reset()
        self._pending: deque[tuple[FrameMeta, np.ndarray]] = deque()
        self._grid: tuple[int, int] | None = None
        self._T_first_world: np.ndarray | None = None  # re-bases the session's world on the first frame
        self._frames_in = 0
        self._results_out = 0
        self._timings: dict[str, float] = {}

    def step(self, frame: Frame) -> list[FrameResult]:
        t0 = time.perf_counter()
        self._frames_in += 1
        img = self._prepare(frame)
        self._admit(frame, img)
        t1 = time.perf_counter()
        return self._finish(self.session.push(img), t0, t1)

    def batch_key(self) -> Any:
        """Sessions of one model, window and compute dtype may share a model call (`step_batch`)."""
        s = self.session
        return (type(self), id(self.model), s.autocast_dtype, s.window_size, self.image_width)

    def spawn(self) -> HorizonStreamBackend:
        """A new stream's backend on the same model (weights shared; its own session and motion averaging)."""
        return spawn_sharing_model(self)

    @classmethod
    def step_batch(cls, backends: list[HorizonStreamBackend], frames: list[Frame]
                   ) -> list[list[FrameResult] | Exception]:
        """Push each backend's frame; the chunks that become ready run in one model call (`push_batch`). A frame
        of another resolution than its session's gets that error and leaves its backend untouched."""
        from recon.models.horizonstream_session import push_batch

        t0 = time.perf_counter()
        out: list[list[FrameResult] | Exception] = []
        ready: list[tuple[int, HorizonStreamBackend, torch.Tensor]] = []
        for i, (b, f) in enumerate(zip(backends, frames, strict=True)):
            b._frames_in += 1
            try:
                img = b._prepare(f)
            except BackendError as e:
                out.append(e)
                continue
            b._admit(f, img)
            out.append([])
            ready.append((i, b, img))
        t1 = time.perf_counter()
        if ready:
            fixed = push_batch([b.session for _, b, _ in ready], [img for _, _, img in ready])
            for (i, b, _), fx in zip(ready, fixed, strict=True):
                out[i] = b._finish(fx, t0, t1)
        return out

    def _prepare(self, frame: Frame) -> torch.Tensor:
        """The frame on the model grid, refused when its grid is not the session's (nothing changes here)."""
        img = prepare_frame(frame, self.image_width, self.device).to(self._dtype)
        hw = (int(img.shape[-2]), int(img.shape[-1]))
        if self._grid is not None and hw != self._grid:
            raise BackendError(f"{self.name} backend, stream {frame.stream_id!r} seq {frame.seq}: frame resolution "
                               f"{frame.width}x{frame.height} maps to a {hw[1]}x{hw[0]} grid, the session's is "
                               f"{self._grid[1]}x{self._grid[0]}; reset first")
        return img

    def _admit(self, frame: Frame, img: torch.Tensor) -> None:
        self._grid = (int(img.shape[-2]), int(img.shape[-1]))
        self._pending.append((FrameMeta(frame.stream_id, frame.seq, frame.t_ns), to_uint8_image(img)))

    def _finish(self, fixed: list, t0: float, t1: float) -> list[FrameResult]:
        t2 = time.perf_counter()
        results = self._results(fixed)
        if fixed:
            self._timings = {"preprocess_ms": 1000 * (t1 - t0), "chunk_ms": 1000 * (t2 - t1),
                             "convert_ms": 1000 * (time.perf_counter() - t2)}
            logger.debug("%s chunk of %d frames: %s", self.name, len(fixed), self._timings)
        return results

    def flush(self) -> list[FrameResult]:
        results = self._results(self.session.flush())
        self._grid = None
        self._T_first_world = None
        return results

    def _state_config(self) -> dict[str, Any]:
        s = self.session
        return {"model": snapshot.model_signature(self.model), "image_width": self.image_width,
                "window_size": s.window_size, "sliding_size": s.sliding_size,
                "autocast": str(s.autocast_dtype)}

    def save_state(self) -> BackendState:
        return snapshot.to_state(self.name, self.STATE_VERSION, self._state_config(),
                                 {"session": self.session.export_state(), "pending": self._pending,
                                  "grid": self._grid, "T_first_world": self._T_first_world,
                                  "frames_in": self._frames_in, "results_out": self._results_out})

    def load_state(self, state: BackendState) -> None:
        values = snapshot.from_state(state, self.name, self.STATE_VERSION, self._state_config())
        self.session.import_state(values["session"])
        self._pending = deque(values["pending"])
        self._grid = tuple(values["grid"]) if values["grid"] is not None else None
        self._T_first_world = values["T_first_world"]
        self._frames_in, self._results_out = int(values["frames_in"]), int(values["results_out"])

    def _results(self, fixed: list) -> list[FrameResult]:
        out = []
        for sf in fixed:
            meta, image = self._pending.popleft()
            assert self._grid is not None
            T_world_cam, K = session_frame_to_pose(sf.T_cam_world, sf.fov, self._grid)
            if self._T_first_world is None:
                self._T_first_world = np.linalg.inv(T_world_cam)
            T_world_cam = self._T_first_world @ T_world_cam
            result = make_result(meta, T_world_cam, K, sf.depth.cpu().numpy(), sf.conf.cpu().numpy(), None,
                                 image, "depth")
            result.metric = True  # depth and translation carry the predicted metric scale
            out.append(result)
        self._results_out += len(out)
        return out

    def stats(self) -> BackendStats:
        s = self.session
        state = s.state
        tokens = sum(int(t.shape[2] * t.shape[4]) for t in state.frame_kv if t is not None)
        tokens += sum(int(t.shape[3] * t.shape[4]) for t in state.global_kv if t is not None)
        return BackendStats(frames_in=self._frames_in, results_out=self._results_out, memory_bytes=s.nbytes(),
                            tokens_cached=tokens, timings_ms=dict(self._timings),
                            extra={"chunk_idx": s.chunk_idx, "window_size": s.window_size,
                                   "sliding_size": s.sliding_size, "metric_scale": s.last_scale,
                                   "pending_frames": len(self._pending)})


def create(config: HorizonStreamBackendConfig) -> HorizonStreamBackend:
    """Backend factory (`--backend horizonstream`); options: recon.backends.configs.HorizonStreamBackendConfig."""
    from recon.models.horizonstream import build_horizonstream

    dev = pick_device(config.device)
    model = build_horizonstream(weights=config.weights, model_config=config.model_config, seed=config.seed, device=dev)
    width = config.image_width or (TINY_IMAGE_WIDTH if config.model_config == "tiny" else 518)
    return HorizonStreamBackend(model, device=dev, autocast_dtype=pick_autocast_dtype(config.dtype, dev),
                                image_width=width, sliding_size=config.sliding_size, window_size=config.window_size,
                                seed=config.seed)
