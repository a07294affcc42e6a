"""LASER backend: an offline window model (pi3 or VGGT) made streaming by window registration.

Frames are resized to the model's grid and collected into overlapping windows (W, O). Each full window is
predicted by the backbone on a worker thread while the calling thread registers the previous prediction
(global Sim(3) + layer-wise scale alignment, recon.align.engine), so inference of window k+1 overlaps the
registration of window k. Each frame is emitted once, when first registered; only the previous window and the
frames of the window being filled are held. Each result says which window it comes from and the Sim(3) that
joined that window to the previous one (`FrameResult.chunk`), so the map layer's pose graph keeps a window rigid
and puts scale drift at the joins.

Checkpointable: the state is the previous registered window and the world-frame intrinsics (the engine), the
frames of the window being filled, and the windows submitted but not registered yet, which a restored backend
predicts again at its next step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from recon.align.depth_layers import LayerConfig
from recon.align.engine import LaserEngine, RegisteredWindow
from recon.align.windows import WindowScheduler
from recon.backends import snapshot
from recon.backends.base import BackendState
from recon.backends.configs import LaserBackendConfig
from recon.backends.runtime import to_uint8_image
from recon.errors import BackendError, ConfigError
from recon.types import BackendStats, ChunkLink, Frame, FrameResult, WindowPrediction

logger = logging.getLogger(__name__)


class WindowModel(Protocol):
    """An offline model predicting one window: images [n,3,H,W] in [0,1] -> WindowPrediction (frames unset)."""

    patch_size: int

    def predict_window(self, images: torch.Tensor) -> WindowPrediction: ...


# Backbone name -> "module:function" building a WindowModel from backend options (weights, model_config, ...).
BACKBONES: dict[str, str] = {
    "pi3": "recon.models.pi3:build_window_model",
    "vggt": "recon.models.vggt:build_window_model",
}


def load_backbone(name: str, **options: Any) -> WindowModel:
    """Build the named window model; unknown names raise ConfigError listing the known ones."""
    import importlib

    if name not in BACKBONES:
        raise ConfigError(f"unknown LASER backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    module_name, func = BACKBONES[name].split(":")
    builder: Callable[..., WindowModel] = getattr(importlib.import_module(module_name), func)
    return builder(**options)


@dataclass
class _Pending:
    """A frame waiting in the current window: what we need to emit it later."""

    seq: int
    t_ns: int
    stream_id: str
    image_chw: torch.Tensor  # float [0,1] at model resolution


def resize_for_model(image_hw3: np.ndarray, width: int, patch: int) -> torch.Tensor:
    """uint8 HxWx3 -> float [0,1] 3xhxw at the reference loader's crop-mode size (the live-frame fast path)."""
    from recon.models.preprocess import preprocess_frames

    return preprocess_frames(image_hw3, mode="crop", target_size=width, patch_size=patch)[0]


class LaserBackend:
    """Streaming LASER over a window model.

    Args:
        model: the window model (see `load_backbone`).
        window_size, overlap: window schedule (paper: 20 / 5).
        image_width: model input width in pixels (multiple of the model's patch size; 518 for full models).
        top_conf_percentile, depth_refine, layer_config, relative_tol: see recon.align.engine.LaserEngine.
        overlap_inference: predict the next window on a worker thread while registering the current one.
    """

    name = "laser"
    STATE_VERSION = 1

    def __init__(
        self,
        model: WindowModel,
        *,
        window_size: int = 20,
        overlap: int = 5,
        image_width: int = 518,
        top_conf_percentile: float = 0.5,
        depth_refine: bool = True,
        layer_config: LayerConfig | None = None,
        relative_tol: bool = False,
        overlap_inference: bool = True,
    ) -> None:
        if image_width % model.patch_size:
            raise ConfigError(f"image_width {image_width} must be a multiple of the patch size {model.patch_size}")
        self.model = model
        self.image_width = image_width
        self.overlap_inference = overlap_inference
        self.engine = LaserEngine(window_size, overlap, top_conf_percentile=top_conf_percentile,
                                  depth_refine=depth_refine, layer_config=layer_config, relative_tol=relative_tol)
        self._scheduler: WindowScheduler[_Pending] = WindowScheduler(window_size, overlap)
        self._jobs: queue.Queue[list[_Pending] | None] = queue.Queue(maxsize=1)
        self._done: queue.Queue[tuple[list[_Pending], WindowPrediction | BaseException]] = queue.Queue()
        self._in_flight = 0
        self._submitted: list[list[_Pending]] = []  # windows submitted, not registered yet (in order)
        self._resubmit: list[list[_Pending]] = []  # restored in-flight windows, predicted at the next step
        self._worker: threading.Thread | None = None
        self._timings: dict[str, float] = {}
        self.reset()

    # -- Backend interface -------------------------------------------------------------------------------------

    def reset(self) -> None:
        self._drain()
        self.engine.reset()
        self._scheduler.reset()
        self._grid_hw: tuple[int, int] | None = None
        self._frames_in = 0
        self._results_out = 0
        self._windows = 0

    def step(self, frame: Frame) -> list[FrameResult]:
        image = resize_for_model(frame.image, self.image_width, self.model.patch_size)
        if self._grid_hw is None:
            self._grid_hw = tuple(image.shape[1:])
        elif tuple(image.shape[1:]) != self._grid_hw:
            raise BackendError(f"laser: resolution changed within a session ({self._grid_hw} -> "
                               f"{tuple(image.shape[1:])}); reset the stream first")
        self._frames_in += 1
        results = self._submit_restored()
        window = self._scheduler.push(_Pending(frame.seq, frame.t_ns, frame.stream_id, image))
        if window is not None:
            results += self._submit(window)
        results += self._collect(block=False)
        return results

    def flush(self) -> list[FrameResult]:
        results = self._submit_restored()
        tail = self._scheduler.flush()
        if tail is not None:
            results += self._submit(tail)
        while self._in_flight:
            results += self._collect(block=True)
        return results

    def _submit_restored(self) -> list[FrameResult]:
        results: list[FrameResult] = []
        while self._resubmit:
            results += self._submit(self._resubmit.pop(0))
        return results

    def _state_config(self) -> dict[str, Any]:
        e = self.engine
        return {"model": {"type": type(self.model).__name__, **snapshot.model_signature(getattr(self.model, "model",
                                                                                                self.model))},
                "image_width": self.image_width, "window_size": e.window_size, "overlap": e.overlap,
                "top_conf_percentile": e.top_conf_percentile, "depth_refine": e.depth_refine,
                "layer_config": snapshot.pack(e.layer_config, {}), "relative_tol": e.relative_tol}

    def save_state(self) -> BackendState:
        e, sched = self.engine, self._scheduler
        return snapshot.to_state(self.name, self.STATE_VERSION, self._state_config(), {
            "engine": {"K_ref": e.K_ref, "prev": e._prev, "index": e._index},
            "scheduler": {"items": list(sched._items), "emitted_any": sched._emitted_any},
            "in_flight": [list(w) for w in [*self._resubmit, *self._submitted]], "grid_hw": self._grid_hw,
            "frames_in": self._frames_in, "results_out": self._results_out, "windows": self._windows})

    def load_state(self, state: BackendState) -> None:
        values = snapshot.from_state(state, self.name, self.STATE_VERSION, self._state_config())
        self.reset()
        e = values["engine"]
        self.engine.K_ref, self.engine._prev, self.engine._index = e["K_ref"], e["prev"], int(e["index"])
        self._scheduler._items = list(values["scheduler"]["items"])
        self._scheduler._emitted_any = bool(values["scheduler"]["emitted_any"])
        self._resubmit = [list(w) for w in values["in_flight"]]
        self._grid_hw = tuple(values["grid_hw"]) if values["grid_hw"] is not None else None
        self._frames_in, self._results_out = int(values["frames_in"]), int(values["results_out"])
        self._windows = int(values["windows"])

    def stats(self) -> BackendStats:
        held = sum(p.image_chw.numel() * 4 for p in self._scheduler._items)
        return BackendStats(frames_in=self._frames_in, results_out=self._results_out,
                            memory_bytes=self.engine.memory_bytes + held, timings_ms=dict(self._timings),
                            extra={"windows": self._windows, "windows_in_flight": self._in_flight})

    # -- inference worker --------------------------------------------------------------------------------------

    def _predict(self, window: list[_Pending]) -> WindowPrediction:
        t0 = time.perf_counter()
        with torch.inference_mode():
            pred = self.model.predict_window(torch.stack([p.image_chw for p in window]))
        self._timings["inference"] = (time.perf_counter() - t0) * 1e3
        pred.frames = [p.seq for p in window]
        return pred

    def _run_worker(self) -> None:
        while True:
            window = self._jobs.get()
            if window is None:
                return
            try:
                self._done.put((window, self._predict(window)))
            except BaseException as e:  # handed to the caller's thread, which re-raises
                self._done.put((window, e))

    def _submit(self, window: list[_Pending]) -> list[FrameResult]:
        self._in_flight += 1
        self._submitted.append(window)
        if not self.overlap_inference:
            try:
                self._done.put((window, self._predict(window)))
            except BaseException as e:
                self._done.put((window, e))
            return self._collect(block=True)
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run_worker, name="laser-inference", daemon=True)
            self._worker.start()
        results: list[FrameResult] = []
        while True:
            try:
                self._jobs.put(window, timeout=0.01)
                break
            except queue.Full:
                results += self._collect(block=False)  # register what is ready while the worker is busy
        return results

    def _collect(self, block: bool) -> list[FrameResult]:
        results: list[FrameResult] = []
        while self._in_flight:
            try:
                window, pred = self._done.get(block=block)
            except queue.Empty:
                break
            self._in_flight -= 1
            if self._submitted:
                self._submitted.pop(0)
            if isinstance(pred, BaseException):
                raise BackendError(f"laser: window inference failed: {pred}") from pred
            registered = self.engine.register(pred)
            self._windows += 1
            self._timings.update({f"register_{k}": v for k, v in registered.timings_ms.items()})
            results += self._to_results(registered, {p.seq: p for p in window}, pred)
            block = False
        self._results_out += len(results)
        return results

    def _to_results(self, reg: RegisteredWindow, pending: dict[int, _Pending],
                    pred: WindowPrediction) -> list[FrameResult]:
        conf_by_seq = dict(zip(pred.frames, pred.conf, strict=True))
        chunk = window_link(reg)
        out = []
        for f in reg.frames:
            p = pending[f.frame]
            out.append(FrameResult(
                stream_id=p.stream_id, seq=p.seq, t_ns=p.t_ns,
                T_world_cam=f.T_world_cam.double().numpy(), K=f.K.double().numpy(),
                depth=f.depth.float().numpy(), confidence=conf_by_seq[f.frame].float().numpy(),
                points_world=f.world_points.float().numpy(), metric=False, image=to_uint8_image(p.image_chw),
                chunk=chunk,
            ))
        return out

    def _drain(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            self._jobs.put(None)
            self._worker.join(timeout=30)
        self._worker = None
        self._jobs = queue.Queue(maxsize=1)
        self._done = queue.Queue()
        self._in_flight = 0
        self._submitted = []
        self._resubmit = []

    def close(self) -> None:
        """Stop the inference worker."""
        self._drain()


def window_link(reg: RegisteredWindow) -> ChunkLink:
    """The window's `ChunkLink`: its index and the Sim(3) (X_prev = s R X + t) that joined it to the previous window
    over their overlap, with the pixels it was fitted on. The IRLS fit keeps no residuals, so no log-scale sigma is
    claimed (the map layer then uses its default per join)."""
    if reg.sim3 is None:
        return ChunkLink(reg.index)
    S = np.eye(4)
    S[:3, :3] = float(reg.sim3.scale) * reg.sim3.R.double().numpy()
    S[:3, 3] = reg.sim3.t.double().numpy().reshape(3)
    return ChunkLink(reg.index, S, int(reg.sim3.overlap_mask.sum()))


def create(config: LaserBackendConfig) -> LaserBackend:
    """Backend factory (`--backend laser --backbone pi3|vggt`); options: recon.backends.configs.LaserBackendConfig
    (the model ones go to the backbone's window-model builder)."""
    model = load_backbone(config.backbone, **{k: v for k, v in config.backbone_options().items() if v is not None})
    width = config.image_width or getattr(model, "default_width", 518)
    return LaserBackend(model, window_size=config.window_size, overlap=config.overlap, image_width=width,
                        top_conf_percentile=config.top_conf_percentile, depth_refine=config.depth_refine,
                        layer_config=LayerConfig(downsample=config.layer_downsample),
                        relative_tol=config.relative_tol, overlap_inference=config.overlap_inference)
