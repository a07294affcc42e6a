"""`streamvggt` backend: StreamVGGT streaming one frame at a time with an unbounded KV cache.

Each frame is resized to the model grid (recon.models.preprocess fast path, "crop" mode) and passed to a
`StreamingSession` (recon.models.streaming): the aggregator's global blocks attend to every earlier frame
through per-layer KV caches that grow without bound (~0.1 GB per frame at 518x392 in bf16, reference notes §3.3),
which is the point of comparison for the bounded `infinitevggt` backend. One result per frame, emitted at once.

The world frame is camera 0 of the session, in the model's normalised (not metric) scale; the camera-from-world
pose encoding is converted to `T_world_cam` here (recon.geometry.pose_encoding). Results are at the model
resolution with the predicted K for that grid. A frame whose model-grid size differs from the session's raises
BackendError (reset first).

Options (keyword arguments of `create`):
    weights: checkpoint path (StreamVGGT checkpoints.pth); default: the installed `streamvggt` entry.
    model_config: "full" or "tiny" (random weights unless `weights`; for demos and tests).
    random_init: random weights instead of a checkpoint.
    device, dtype, image_width, points, seed: as for the `vggt` backend.
    camera_cache: "reference" (published behaviour, quirk A) or "per_iteration" (equals the batch pass).
    capacity: initial KV capacity per layer in tokens (0: grow by doubling).
    policy: an `recon.memory.EvictionPolicy` for the aggregator caches (default: unbounded).
    camera_policy: an `recon.memory.EvictionPolicy` for the camera-trunk caches (default: unbounded, as published).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from recon.backends import snapshot
from recon.backends.base import BackendState, spawn_sharing_model
from recon.backends.configs import StreamVGGTBackendConfig
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
from recon.errors import BackendError
from recon.types import BackendStats, Frame, FrameResult

logger = logging.getLogger(__name__)


class StreamVGGTBackend:
    """One stream through a StreamVGGT streaming session (`reset` starts a new session).

    Checkpointable: the state is the session's KV caches (aggregator and camera trunk, with the eviction
    policy's anchors and scores) and the frame grid, so a restored backend continues in the same world frame.
    """

    name = "streamvggt"
    STATE_VERSION = 1

    def __init__(self, model: Any, *, device: torch.device, autocast_dtype: torch.dtype, image_width: int,
                 camera_cache: str = "reference", capacity: int = 0, policy: Any = None,
                 points: str = "depth", camera_policy: Any = None, static: bool = False,
                 compile: bool | dict = False) -> None:
        """Options arrive validated by their config dataclass (`create` is the way in)."""
        self.model = model
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.image_width = image_width
        self.points = points
        self.session = model.new_session(camera_cache=camera_cache, policy=policy, capacity=capacity,
                                         camera_policy=camera_policy, static=static, compile=compile)
        self._dtype = next(model.parameters()).dtype
        self.reset()

    def reset(self) -> None:
        self.session.reset()
        self._frames_in = 0
        self._results_out = 0
        self._timings: dict[str, float] = {}

    def step(self, frame: Frame) -> list[FrameResult]:
        t0 = time.perf_counter()
        self._frames_in += 1
        img = self._prepare(frame)
        t1 = time.perf_counter()
        try:
            with autocast_context(self.device, self.autocast_dtype):
                out = self.session.step(img)
        except BackendError as e:
            raise BackendError(f"{self.name} backend, stream {frame.stream_id!r} seq {frame.seq}: {e}") from e
        return [self._result(frame, img, out, t0, t1)]

    def batch_key(self) -> Any:
        """Sessions of one model, class and compute dtype may share a model call (`step_batch`)."""
        return (type(self), id(self.model), self.autocast_dtype, self.image_width)

    def spawn(self) -> StreamVGGTBackend:
        """A new stream's backend on the same model (its weights shared, read-only; its own session, policies and
        counters): what lets a node batch its streams and load the weights once."""
        return spawn_sharing_model(self)

    @classmethod
    def step_batch(cls, backends: list[StreamVGGTBackend], frames: list[Frame]
                   ) -> list[list[FrameResult] | Exception]:
        """Step each backend by its frame in one model call (recon.models.batched); equals their `step`s. A frame
        its session refuses (another resolution) gets that error and leaves its backend untouched."""
        from recon.models.batched import step_batch

        t0 = time.perf_counter()
        out: list[list[FrameResult] | Exception] = []
        ready: list[tuple[int, StreamVGGTBackend, Frame, torch.Tensor]] = []
        for i, (b, f) in enumerate(zip(backends, frames, strict=True)):
            b._frames_in += 1
            try:
                img = b._prepare(f)
                b.session.check_image(img)
            except BackendError as e:
                out.append(BackendError(f"{cls.name} backend, stream {f.stream_id!r} seq {f.seq}: {e}"))
                continue
            out.append([])
            ready.append((i, b, f, img))
        if not ready:
            return out
        t1 = time.perf_counter()
        lead = ready[0][1]
        with autocast_context(lead.device, lead.autocast_dtype):
            stepped = step_batch([b.session for _, b, _, _ in ready], [img for _, _, _, img in ready])
        for (i, b, f, img), o in zip(ready, stepped, strict=True):
            out[i] = [b._result(f, img, o, t0, t1)]
        return out

    def _prepare(self, frame: Frame) -> torch.Tensor:
        return prepare_frame(frame, self.image_width, self.device).to(self._dtype)

    def _result(self, frame: Frame, img: torch.Tensor, out: dict[str, Any], t0: float, t1: float) -> FrameResult:
        t2 = time.perf_counter()
        hw = (int(img.shape[-2]), int(img.shape[-1]))
        T_world_cam, K = decode_pose(out["pose_enc"][0], hw)
        head = out.get("world_points")
        result = make_result(
            FrameMeta(frame.stream_id, frame.seq, frame.t_ns), T_world_cam, K,
            out["depth"][0, ..., 0].float().cpu().numpy(), out["depth_conf"][0].float().cpu().numpy(),
            None if head is None else head[0].float().cpu().numpy(), to_uint8_image(img), self.points)
        self._timings = {"preprocess_ms": 1000 * (t1 - t0), "model_ms": 1000 * (t2 - t1),
                         "convert_ms": 1000 * (time.perf_counter() - t2)}
        logger.debug("%s frame %d: %s", self.name, frame.seq, self._timings)
        self._results_out += 1
        return result

    def flush(self) -> list[FrameResult]:
        return []

    def _state_config(self) -> dict[str, Any]:
        s = self.session
        return {"model": snapshot.model_signature(self.model), "image_width": self.image_width,
                "camera_cache": s.camera_cache, "points": self.points, "policy": s.memory.policy.name,
                "camera_policy": s.camera_memory.policy.name if s.camera_memory is not None else None,
                "static": s.static}

    def save_state(self) -> BackendState:
        return snapshot.to_state(self.name, self.STATE_VERSION, self._state_config(),
                                 {"session": self.session.export_state(), "frames_in": self._frames_in,
                                  "results_out": self._results_out})

    def load_state(self, state: BackendState) -> None:
        values = snapshot.from_state(state, self.name, self.STATE_VERSION, self._state_config())
        self.session.import_state(values["session"])
        self._frames_in, self._results_out = int(values["frames_in"]), int(values["results_out"])

    def stats(self) -> BackendStats:
        s = self.session
        return BackendStats(frames_in=self._frames_in, results_out=self._results_out, memory_bytes=s.nbytes(),
                            tokens_cached=s.memory.num_tokens(), timings_ms=dict(self._timings),
                            extra={"camera_cache": s.camera_cache, "frames_in_session": s.num_frames,
                                   "policy": s.memory.policy.name})


def create(config: StreamVGGTBackendConfig) -> StreamVGGTBackend:
    """Backend factory (`--backend streamvggt`); the options are recon.backends.configs.StreamVGGTBackendConfig."""
    from recon.models.vggt import build_vggt

    dev = pick_device(config.device)
    model = build_vggt(weights=config.weights, weights_name="streamvggt", model_config=config.model_config,
                       causal=True, random_init=config.random_init, seed=config.seed, device=dev)
    return StreamVGGTBackend(model, device=dev, autocast_dtype=pick_autocast_dtype(config.dtype, dev),
                             image_width=config.image_width or default_image_width(config.model_config),
                             camera_cache=config.camera_cache, capacity=config.capacity, policy=config.policy,
                             points=config.points, camera_policy=config.camera_policy)
