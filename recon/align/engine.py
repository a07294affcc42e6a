"""LASER's window registration engine: each window predicted by an offline model is registered onto the
previous, already registered window (global Sim(3), then layer-wise scale alignment), and its new frames are
emitted once, final.

Reference behaviour (neu-vi/LASER@987d674 StreamingWindowEngine; rules in ../shared/golden/laser_stream/README.md):
window 0 fixes the world frame, the scale and one pinhole K (estimated from its first frame); every window's
points are re-unprojected from its depth with that K; window 0 is emitted whole, later windows only from frame O
on (an overlap frame keeps its older estimate). Only the previous window is held in memory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from recon.align.depth_layers import LayerConfig, WindowLayers, align_layers, build_window_layers
from recon.align.window_registration import WindowSim3, apply_sim3_to_poses, confidence_mask, register_adjacent_windows
from recon.geometry.camera import backproject_depth
from recon.types import WindowPrediction
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)
_warn = WarnOnce(logger)


@dataclass
class RegisteredFrame:
    """One emitted frame, in the world frame of window 0."""

    frame: int
    T_world_cam: torch.Tensor
    local_points: torch.Tensor
    world_points: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    K: torch.Tensor


@dataclass
class RegisteredWindow:
    """A registered window and the record of how it was aligned (for logs, tests and benchmarks)."""

    index: int
    frames: list[RegisteredFrame]
    conf_thr: torch.Tensor
    sim3: WindowSim3 | None
    layers: WindowLayers | None
    layer_scale: dict[tuple[int, int], np.float32] | None
    timings_ms: dict[str, float]


@dataclass
class _PreviousWindow:
    local_points: torch.Tensor  # after global scale and LSA
    poses: torch.Tensor
    mask: torch.Tensor
    layers: WindowLayers | None  # built before the window's own LSA


def estimate_intrinsics(local_points: torch.Tensor) -> torch.Tensor:
    """Pinhole K from a camera-frame point map: principal point at the image centre, focal = lower median.

    fx = median((col - cx)·z / (x + 1e-8)), fy likewise with rows and y, over all pixels (torch.median is the
    lower median, as in the reference).
    """
    h, w = local_points.shape[:2]
    dtype = local_points.dtype
    cx, cy = torch.tensor(w / 2, dtype=dtype), torch.tensor(h / 2, dtype=dtype)
    rows, cols = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    x, y, z = local_points.unbind(-1)
    fx = torch.median(((cols - cx) * z / (x + 1e-8)).reshape(-1))
    fy = torch.median(((rows - cy) * z / (y + 1e-8)).reshape(-1))
    K = torch.zeros(3, 3, dtype=dtype)
    K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[2, 2] = fx, fy, cx, cy, 1.0
    return K


def sane_intrinsics(K: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """K itself when its focal lengths are finite and positive, else a 60-degree-FoV pinhole (logged once).

    A trained model's point maps give a sensible K; an untrained one (smoke tests, random weights) may not, and
    a non-positive focal would turn every later window into NaNs.
    """
    f = K[[0, 1], [0, 1]]
    if bool(torch.isfinite(f).all() and (f > 0).all()):
        return K
    _warn("intrinsics", "estimated focal lengths %s are not usable; assuming a 60-degree horizontal FoV", f.tolist())
    out = K.clone()
    out[0, 0] = out[1, 1] = width / (2 * math.tan(math.radians(30)))
    return out


class LaserEngine:
    """Registers windows one after another; holds only the previous window.

    Args:
        window_size, overlap: the schedule (paper setting 20/5); frames [O:] of each later window are new.
        top_conf_percentile: fraction of a window's pixels kept as confident (quantile rule).
        depth_refine: run layer-wise scale alignment after the global Sim(3).
        layer_config: segmentation and linking knobs of the layer alignment.
        relative_tol: stop the scale IRLS on a relative instead of the reference's absolute tolerance.
    """

    def __init__(
        self,
        window_size: int = 20,
        overlap: int = 5,
        *,
        top_conf_percentile: float = 0.5,
        depth_refine: bool = True,
        layer_config: LayerConfig | None = None,
        relative_tol: bool = False,
    ) -> None:
        self.window_size = window_size
        self.overlap = overlap
        self.top_conf_percentile = top_conf_percentile
        self.depth_refine = depth_refine
        self.layer_config = layer_config or LayerConfig()
        self.relative_tol = relative_tol
        self.reset()

    def reset(self) -> None:
        """Forget the world frame, K and the previous window."""
        self.K_ref: torch.Tensor | None = None
        self._prev: _PreviousWindow | None = None
        self._index = 0

    @property
    def memory_bytes(self) -> int:
        """Bytes held for the previous window."""
        if self._prev is None:
            return 0
        held = self._prev.local_points.numel() * self._prev.local_points.element_size()
        return held + (self._prev.layers.layers.nbytes if self._prev.layers is not None else 0)

    def register(self, pred: WindowPrediction) -> RegisteredWindow:
        """Register one window; returns the frames it makes final."""
        import time

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        overlap = self.overlap
        mask, thr = confidence_mask(pred.conf, self.top_conf_percentile)
        if self.K_ref is None:
            h, w = pred.local_points.shape[1:3]
            self.K_ref = sane_intrinsics(estimate_intrinsics(pred.local_points[0]), w, h)
        local = backproject_depth(pred.local_points[..., 2], self.K_ref)
        poses = pred.camera_poses
        sim3 = None
        if self._prev is not None:
            valid = self._prev.mask[-overlap:] & mask[:overlap]
            sim3 = register_adjacent_windows(
                self._prev.local_points[-overlap:], local[:overlap], self._prev.poses[-overlap:], poses[:overlap],
                valid, relative_tol=self.relative_tol,
            )
            local = sim3.scale * local
            poses = apply_sim3_to_poses(poses, sim3.scale, sim3.R, sim3.t)
        timings["sim3"] = (time.perf_counter() - t0) * 1e3
        layers = None
        layer_scale = None
        if self.depth_refine:
            t1 = time.perf_counter()
            layers = build_window_layers(local[..., 2].numpy(), mask.numpy(), self.layer_config)
            timings["segmentation"] = (time.perf_counter() - t1) * 1e3
            if self._prev is not None and self._prev.layers is not None:
                t2 = time.perf_counter()
                aligned = align_layers(self._prev.local_points[..., 2].numpy(), self._prev.layers,
                                       local[..., 2].numpy(), layers, overlap, self.layer_config)
                local = local * torch.from_numpy(aligned.scale_map)[..., None].to(local.dtype)
                layer_scale = aligned.layer_scale
                timings["layer_alignment"] = (time.perf_counter() - t2) * 1e3
        first_new = 0 if self._prev is None else overlap
        h_img, w_img = pred.local_points.shape[1:3]
        frames = []
        for i in range(first_new, len(pred.frames)):
            R, t = poses[i, :3, :3], poses[i, :3, 3]
            frames.append(RegisteredFrame(
                frame=pred.frames[i], T_world_cam=poses[i], local_points=local[i], world_points=local[i] @ R.T + t,
                depth=local[i, ..., 2], mask=mask[i], K=sane_intrinsics(estimate_intrinsics(local[i]), w_img, h_img),
            ))
        self._prev = _PreviousWindow(local, poses, mask, layers)
        timings["total"] = (time.perf_counter() - t0) * 1e3
        window = RegisteredWindow(self._index, frames, thr, sim3, layers, layer_scale, timings)
        self._index += 1
        return window
