"""`vggt` backend: VGGT run offline over short clips, chained into one trajectory.

Frames are resized to the model grid (recon.models.preprocess fast path, "crop" mode: width `image_width`,
height rounded to a multiple of 14) and buffered. When `clip_length` frames are buffered (or on `flush`) the clip
runs through VGGT in one pass (full attention), and every frame not yet emitted gets a result.

VGGT's world frame is camera 0 of each clip, in a per-clip normalised scale. Clips therefore overlap by `overlap`
frames (default 1): the first frames of a clip are the last of the previous one, whose world poses are known,
so the new clip is mapped into the session's world by the Sim(3) of the first overlap frame (rotation and
translation from the two poses, scale from the median ratio of their depth maps over confident pixels). The
session's world is camera 0 of the first clip. Overlap frames are emitted once, from the clip that first saw them.

The model-native camera-from-world pose encoding is converted to `T_world_cam` here, at the model boundary
(recon.geometry.pose_encoding). Results are at the model resolution, with the predicted K for that grid
(principal point at the centre), `metric=False`.

Options (keyword arguments of `create`):
    weights: checkpoint path (model.safetensors / model.pt); default: the installed `vggt-1b` entry.
    model_config: "full" (VGGT-1B) or "tiny" (the golden fixtures' size; random weights unless `weights`).
    random_init: random weights instead of a checkpoint (demos and benchmarks only).
    device: "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    dtype: compute dtype (autocast; the heads keep their float32 islands): "auto" (bf16 on CUDA, fp32 elsewhere),
        "fp32", "bf16", "fp16".
    image_width: model input width (default 518; 224 for the tiny model).
    clip_length: frames per VGGT pass (default 16); overlap: frames shared by consecutive clips (default 1).
    points: "depth" (depth unprojected with the predicted camera, default) or "head" (point-head output).
    seed: random-init seed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from recon.backends import snapshot
from recon.backends.base import BackendState
from recon.backends.configs import VGGTBackendConfig
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



def _sim3_from_overlap(T_world_a: np.ndarray, T_clip_a: np.ndarray, depth_world: np.ndarray,
                       depth_clip: np.ndarray, conf: np.ndarray) -> tuple[float, np.ndarray]:
    """(scale s, T_world_clip 4x4 rigid part) mapping clip coordinates into the world, from one shared frame.

    s = median(depth in world scale / depth in clip scale) over the more confident half of the pixels; then
    X_world = T_world_a (s * T_clip_a^-1 X_clip) in the rotation/translation sense.
    """
    mask = (conf >= np.median(conf)) & (depth_clip > 1e-6) & (depth_world > 1e-6)
    if not mask.any():
        mask = (depth_clip > 1e-6) & (depth_world > 1e-6)
    s = float(np.median(depth_world[mask] / depth_clip[mask])) if mask.any() else 1.0
    T_a_clip = np.linalg.inv(T_clip_a)
    T_a_clip[:3, 3] *= s
    return s, T_world_a @ T_a_clip


class VGGTBackend:
    """Offline VGGT over overlapping clips (one stream; `reset` starts over).

    Checkpointable: the state is the frames of the clip being filled and the overlap frames carried into the next
    clip with their world poses and depths (what ties the next clip to the world frame).
    """

    name = "vggt"
    STATE_VERSION = 1

    def __init__(self, model: Any, *, device: torch.device, autocast_dtype: torch.dtype, image_width: int,
                 clip_length: int = 16, overlap: int = 1, points: str = "depth") -> None:
        """Options arrive validated by `VGGTBackendConfig` (`create` is the way in)."""
        self.model = model
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.image_width = image_width
        self.clip_length = clip_length
        self.overlap = overlap
        self.points = points
        self.reset()

    def reset(self) -> None:
        self._buffer: list[tuple[FrameMeta, torch.Tensor]] = []
        # Overlap frames carried into the next clip: (meta, image, T_world_cam, depth in world scale).
        self._carry: deque = deque(maxlen=max(self.overlap, 1))
        self._image_hw: tuple[int, int] | None = None
        self._frames_in = 0
        self._results_out = 0
        self._timings: dict[str, float] = {}

    def _prepare(self, frame: Frame) -> torch.Tensor:
        img = prepare_frame(frame, self.image_width, self.device)
        hw = (int(img.shape[-2]), int(img.shape[-1]))
        if self._image_hw is not None and hw != self._image_hw:
            raise BackendError(f"vggt backend: frame {frame.seq} resizes to {hw[0]}x{hw[1]} but the session runs at "
                               f"{self._image_hw[0]}x{self._image_hw[1]}; reset() before changing resolution")
        self._image_hw = hw
        return img

    def step(self, frame: Frame) -> list[FrameResult]:
        self._frames_in += 1
        self._buffer.append((FrameMeta(frame.stream_id, frame.seq, frame.t_ns), self._prepare(frame)))
        if len(self._carry) * (self.overlap > 0) + len(self._buffer) >= self.clip_length:
            return self._run_clip()
        return []

    def flush(self) -> list[FrameResult]:
        return self._run_clip() if self._buffer else []

    def _run_clip(self) -> list[FrameResult]:
        carry = list(self._carry) if self.overlap > 0 else []
        new = self._buffer
        self._buffer = []
        images = torch.stack([c[1] for c in carry] + [n[1] for n in new]).to(next(self.model.parameters()).dtype)
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast_context(self.device, self.autocast_dtype):
            out = self.model(images[None])
        self._timings["clip_ms"] = 1000 * (time.perf_counter() - t0)
        hw = self._image_hw
        assert hw is not None
        poses = [decode_pose(out["pose_enc"][0, i], hw) for i in range(images.shape[0])]
        depth = out["depth"][0, ..., 0].float().cpu().numpy()
        conf = out["depth_conf"][0].float().cpu().numpy()
        head_pts = out["world_points"][0].float().cpu().numpy() if "world_points" in out else None
        # Map the clip into the session's world through the first carried frame (none for the first clip).
        scale, T_world_clip = 1.0, np.eye(4)
        if carry:
            _, _, T_world_a, depth_world_a = carry[0]
            scale, T_world_clip = _sim3_from_overlap(T_world_a, poses[0][0], depth_world_a, depth[0], conf[0])
        results = []
        self._carry.clear()
        n_carry = len(carry)
        for i in range(images.shape[0]):
            T_clip_cam, K = poses[i]
            T = T_clip_cam.copy()
            T[:3, 3] *= scale
            T_world_cam = T_world_clip @ T
            depth_w = depth[i] * scale
            if i >= n_carry:
                meta = new[i - n_carry][0]
                head_w = None
                if head_pts is not None:
                    head_w = (scale * head_pts[i].astype(np.float64)) @ T_world_clip[:3, :3].T + T_world_clip[:3, 3]
                results.append(make_result(meta, T_world_cam, K, depth_w, conf[i], head_w,
                                           to_uint8_image(images[i]), self.points))
            meta_i = carry[i][0] if i < n_carry else new[i - n_carry][0]
            if self.overlap > 0 and i >= images.shape[0] - self.overlap:
                self._carry.append((meta_i, images[i], T_world_cam, depth_w))
        self._results_out += len(results)
        return results

    def _state_config(self) -> dict[str, Any]:
        return {"model": snapshot.model_signature(self.model), "image_width": self.image_width,
                "clip_length": self.clip_length, "overlap": self.overlap, "points": self.points}

    def save_state(self) -> BackendState:
        return snapshot.to_state(self.name, self.STATE_VERSION, self._state_config(),
                                 {"buffer": self._buffer, "carry": self._carry, "image_hw": self._image_hw,
                                  "frames_in": self._frames_in, "results_out": self._results_out})

    def load_state(self, state: BackendState) -> None:
        values = snapshot.from_state(state, self.name, self.STATE_VERSION, self._state_config())
        self._buffer = list(values["buffer"])
        self._carry = values["carry"]
        self._image_hw = tuple(values["image_hw"]) if values["image_hw"] is not None else None
        self._frames_in, self._results_out = int(values["frames_in"]), int(values["results_out"])

    def stats(self) -> BackendStats:
        held = sum(t.numel() * t.element_size() for _, t in self._buffer)
        held += sum(c[1].numel() * c[1].element_size() for c in self._carry)
        return BackendStats(frames_in=self._frames_in, results_out=self._results_out, memory_bytes=held,
                            tokens_cached=0, timings_ms=dict(self._timings),
                            extra={"buffered_frames": len(self._buffer), "clip_length": self.clip_length})


def create(config: VGGTBackendConfig) -> VGGTBackend:
    """Backend factory (`--backend vggt`); the options are recon.backends.configs.VGGTBackendConfig."""
    from recon.models.vggt import build_vggt

    dev = pick_device(config.device)
    model = build_vggt(weights=config.weights, weights_name="vggt-1b", model_config=config.model_config, causal=False,
                       random_init=config.random_init, seed=config.seed, device=dev)
    return VGGTBackend(model, device=dev, autocast_dtype=pick_autocast_dtype(config.dtype, dev),
                       image_width=config.image_width or default_image_width(config.model_config),
                       clip_length=config.clip_length, overlap=config.overlap, points=config.points)
