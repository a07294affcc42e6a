"""Checkpoint state of the geometric backend: `save_state(backend)` / `load_state(backend, state)`.

The node reaches these through `recon.checkpoint.STATE_ADAPTERS` until `GeometricBackend` implements
`Checkpointable` itself (its `save_state` / `load_state` methods can simply call these two functions).

What is saved: the backend's session attributes (mode, image size, intrinsics, output stride, counters, timings)
and every attribute of its tracker (RgbdOdometry or MonoVO: keyframes, tracks, map points, motion model, the
frames held before initialisation, a finished background bundle adjustment waiting to be applied...) that is
plain data (`recon.backends.snapshot`). A background adjustment still running is not waited for: the snapshot
leaves it out and marks the window for another adjustment, which a restored tracker runs at its next keyframe
(waiting held the session's next frame for the rest of the solve, up to seconds on a loaded machine, every
`checkpoint_every` frames of a live stream; only live streams adjust in the background). Attributes
the tracker's constructor derives from its options are not saved but rebuilt: modules, loggers (WarnOnce) and
open3d helper objects; the one open3d value that is state, the keyframe's RGB-D image, is saved as arrays. Any
other value that is not plain data raises StateError naming the attribute, so a tracker that grows new kinds of
state fails loudly in its round-trip test (tests/recon/backends/test_checkpoint_round_trip.py) instead of being
saved without it.

Loading builds the tracker the way the backend's first frame does (`_start`) and overlays the saved attributes.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from recon.backends import snapshot
from recon.backends.base import BackendState
from recon.errors import StateError
from recon.types import Frame
from recon.utils.log import WarnOnce

VERSION = 1
BACKEND_FIELDS = ("_active_mode", "_size", "_K", "_stride", "_frames_in", "_results_out", "_timing_sum",
                  "_timing_n")


def _config(backend: Any) -> dict[str, Any]:
    return {"mode": backend.mode, "K": None if backend.K_option is None else backend.K_option.tolist(),
            "stride": backend.stride_option, "max_points": backend.max_points, "depth_max": backend.depth_max,
            "mono_points": backend.mono_points, "rgbd": backend.rgbd_options, "mono": backend.mono_options}


def _rebuilt_by_constructor(value: Any) -> bool:
    """Values a tracker's constructor derives from its options (never state)."""
    if isinstance(value, types.ModuleType | WarnOnce):
        return True
    if isinstance(value, list | tuple) and value:
        return all(_rebuilt_by_constructor(v) for v in value)
    module = type(value).__module__ or ""
    return module.startswith("open3d") and not _is_rgbd_image(value)


def _is_rgbd_image(value: Any) -> bool:
    return type(value).__name__ == "RGBDImage" and (type(value).__module__ or "").startswith("open3d")


def _tracker_values(tracker: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in _settled(tracker).items():
        if _is_rgbd_image(value):
            values[name] = {"$rgbd": True, "color": value.color.as_tensor().numpy().copy(),
                            "depth": value.depth.as_tensor().numpy().copy()}
        elif not _rebuilt_by_constructor(value):
            values[name] = value
    return values


def _settled(tracker: Any) -> dict[str, Any]:
    """The tracker's attributes with a background adjustment still running left out (MonoVO: `_ba_job`, whose
    thread is not data) and the window marked to be adjusted again; a finished one is kept, to be applied."""
    values = dict(vars(tracker))
    job = values.get("_ba_job")
    if job is not None and not job.wait(0):
        values["_ba_job"] = None
        values["_ba_wanted"] = True
    return values


def _to_rgbd(value: dict[str, Any]) -> Any:
    import open3d as o3d

    return o3d.t.geometry.RGBDImage(o3d.t.geometry.Image(o3d.core.Tensor(np.ascontiguousarray(value["color"]))),
                                    o3d.t.geometry.Image(o3d.core.Tensor(np.ascontiguousarray(value["depth"]))))


def save_state(backend: Any) -> BackendState:
    """The backend's session as a BackendState (StateError when some of it is not plain data)."""
    tracker = backend._tracker
    values = {"backend": snapshot.fields_of(backend, BACKEND_FIELDS),
              "tracker": None if tracker is None else _tracker_values(tracker)}
    return snapshot.to_state(backend.name, VERSION, _config(backend), values)


def load_state(backend: Any, state: BackendState) -> None:
    """Continue the saved session in `backend` (freshly built with the same options)."""
    values = snapshot.from_state(state, backend.name, VERSION, _config(backend))
    backend.reset()
    saved = values["backend"]
    mode = saved["_active_mode"]
    if mode is not None:
        if saved["_size"] is None or saved["_K"] is None:
            raise StateError("geometric: the state has a tracker but no image size or intrinsics")
        w, h = saved["_size"]
        depth = np.zeros((h, w), np.float32) if mode == "rgbd" else None
        backend._start(Frame("restore", 0, 0, np.zeros((h, w, 3), np.uint8), K=saved["_K"], depth=depth))
        if backend._active_mode != mode:
            raise StateError(f"geometric: the state is in {mode} mode, the rebuilt tracker in {backend._active_mode}")
        for name, value in (values["tracker"] or {}).items():
            setattr(backend._tracker, name, _to_rgbd(value) if isinstance(value, dict) and value.get("$rgbd")
                    else value)
    for name in BACKEND_FIELDS:
        setattr(backend, name, saved[name])
