"""The model runtime every learned backend shares: where the network runs and in which number format, frames to the
model grid, pose decoding with the field-of-view guard, depth unprojection and FrameResult building.

A backend adapter (vggt, streamvggt, infinitevggt, lingbot, horizonstream, laser) keeps only its method: how frames
are grouped, what memory is kept, how windows are joined. Device choice is recon.models.weights.pick_device and
the compute dtype recon.models.weights.compute_dtype (`--dtype`, one meaning for every backend); both are used
through `pick_device` / `pick_autocast_dtype` here. Geometry conventions (OpenCV axes, `T_world_cam`) are
recon.geometry's.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from recon.geometry.camera import backproject_depth
from recon.geometry.pose_encoding import guard_fov, pose_encoding_to_T_world_cam
from recon.models.preprocess import preprocess_frames
from recon.models.weights import compute_dtype, pick_device
from recon.types import Frame, FrameResult

__all__ = ["FrameMeta", "autocast_context", "decode_pose", "default_image_width", "make_result",
           "pick_autocast_dtype", "pick_device", "prepare_frame", "to_uint8_image"]

logger = logging.getLogger(__name__)


def prepare_frame(frame: Frame, image_width: int, device: torch.device) -> torch.Tensor:
    """A frame as a [3, H, W] float tensor on the model grid (width `image_width`, "crop" mode, patch 14)."""
    return preprocess_frames(frame.image, mode="crop", target_size=image_width, patch_size=14, device=device)[0]


def pick_autocast_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The compute dtype for `--dtype` (recon.models.weights.compute_dtype: "auto" is bf16 on CUDA, fp32
    elsewhere); the weights stay float32."""
    return compute_dtype(dtype, device)


def autocast_context(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast around the aggregator (the heads switch it off themselves); fp32: no autocast."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_image_width(model_config: str) -> int:
    return 224 if model_config == "tiny" else 518


@dataclass
class FrameMeta:
    """What a result needs from its input frame."""

    stream_id: str
    seq: int
    t_ns: int


def decode_pose(pose_enc_9: torch.Tensor, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(T_world_cam 4x4, K 3x3) float64 from one 9-value encoding, guarding degenerate fields of view.

    The FoV passes through a ReLU in the model; a zero FoV (possible with random weights) would give an infinite
    focal length, so it is clamped (recon.geometry.pose_encoding.guard_fov).
    """
    enc = pose_enc_9.detach().to(torch.float64).cpu().clone()
    enc[7:9] = guard_fov(enc[7:9])
    T, K = pose_encoding_to_T_world_cam(enc, image_hw)
    return T.numpy(), K.numpy()


def to_uint8_image(image_3hw: torch.Tensor) -> np.ndarray:
    """Model input in [0,1] back to uint8 HxWx3 (the colours of the result grid)."""
    return (image_3hw.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def make_result(meta: FrameMeta, T_world_cam: np.ndarray, K: np.ndarray, depth_hw: np.ndarray,
                conf_hw: np.ndarray, head_points_hw3: np.ndarray | None, image: np.ndarray | None,
                points: str) -> FrameResult:
    """A FrameResult at model resolution; points from the depth map (default) or the point head."""
    if points == "head" and head_points_hw3 is not None:
        pts = head_points_hw3.astype(np.float32)
    else:
        cam = backproject_depth(depth_hw, K, np.float32).astype(np.float64)
        pts = (cam @ T_world_cam[:3, :3].T + T_world_cam[:3, 3]).astype(np.float32)
    return FrameResult(stream_id=meta.stream_id, seq=meta.seq, t_ns=meta.t_ns, T_world_cam=T_world_cam, K=K,
                       depth=depth_hw.astype(np.float32), confidence=conf_hw.astype(np.float32),
                       points_world=pts, metric=False, image=image)
