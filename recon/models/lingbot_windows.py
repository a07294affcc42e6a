"""LingBot-Map's windowed mode for long sequences, streamed: overlapping windows with fresh memories, stitched by
Sim(3), every frame emitted once.

The reference (`GCTStream.inference_windowed`, Robbyant/lingbot-map@4cd9860 `models/gct_stream_window.py`;
../shared/reference/lingbot_map.md §7) runs on a whole clip. Here the same windows are formed as frames arrive:
- a window holds `num_scale + (window_size - num_scale) * keyframe_interval` frames (`window_size` counts memory
  slots: scale frames + keyframes); consecutive windows share `overlap` frames
  (`max(num_scale, overlap_keyframes * interval)`, else `overlap_size`, else `num_scale`);
- each window is a fresh `LingBotSession` (its own scale phase, 3D-RoPE indices from 0). The next window starts
  when a frame past the current window arrives, with the buffered last `overlap` images, so only one memory is
  alive at a time;
- window k+1 is mapped into window k's (already warped) frame by a similarity from their overlap: anchor = the last
  overlap frame that is a keyframe in both, else the first; R and the centres from the anchor poses, scale =
  median depth ratio over the paired frames (float32, clamped to [1e-3, 1e3]);
- every window but the last gives up its last `overlap` frames to the next one; a frame is emitted as soon as its
  window's similarity is known, and the last window's tail at `flush`.

The composition question (quirk 7, docs/lingbot.md): the reference composes the similarity as if the pose
encoding's translation slot were a camera centre and its quaternion camera-to-world, while the encoding (and the
streaming decode everywhere, demo.py included) is world-to-camera. `alignment="reference"` reproduces the code as
written (the golden fixture); `alignment="w2c"` (default) composes it for the world-to-camera encoding: with
T_cam_world = [R | t] per window, c2w rotation R^T and centre C = -R^T t, the map of window b into window a is
R_ab = R_a^T R_b, t_ab = C_a - s R_ab C_b, and each pose of window b becomes R' = R R_ab^T, t' = -R' (s R_ab C + t_ab).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from recon.errors import ConfigError
from recon.geometry.pose_encoding import mat_to_quat_xyzw, quat_xyzw_to_mat
from recon.models.lingbot_session import FRAME_NONKEY, LingBotSession, LingBotStreamConfig

if TYPE_CHECKING:
    from recon.models.lingbot import LingBot

logger = logging.getLogger(__name__)

ALIGNMENTS = ("w2c", "reference")
WARPED_KEYS = ("pose_enc", "depth", "world_points")


@dataclass
class LingBotWindowConfig:
    """Windowed-mode sizes (demo defaults: window_size 64, overlap = the scale frames).

    Attributes:
        window_size: memory slots per window: scale frames + keyframes.
        overlap_keyframes: overlap in keyframes (converted to max(num_scale, n * keyframe_interval) frames).
        overlap_size: overlap in frames (used when overlap_keyframes is None; default: num_scale_frames).
        alignment: "w2c" (composition for the world-to-camera encoding, default) or "reference" (as written).
    """

    window_size: int = 64
    overlap_keyframes: int | None = None
    overlap_size: int | None = None
    alignment: str = "w2c"

    def __post_init__(self) -> None:
        if isinstance(self.window_size, bool) or not isinstance(self.window_size, int) or self.window_size < 2:
            raise ConfigError(f"lingbot windowed: window_size must be an integer >= 2, got {self.window_size!r}")
        for name in ("overlap_keyframes", "overlap_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"lingbot windowed: {name} must be None or an integer >= 1, got {value!r}")
        if self.alignment not in ALIGNMENTS:
            raise ConfigError(f"lingbot windowed: alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")

    def frames(self, num_scale: int, interval: int) -> tuple[int, int]:
        """(frames per window, overlap frames) for the stream schedule; validated."""
        interval = max(interval, 1)
        window = num_scale + max(self.window_size - num_scale, 0) * interval
        if self.overlap_keyframes is not None:
            overlap = max(num_scale, self.overlap_keyframes * interval)
        else:
            overlap = self.overlap_size if self.overlap_size is not None else num_scale
        if not 1 <= overlap < window:
            raise ConfigError(f"lingbot windowed: overlap {overlap} frames must be in [1, {window}) (the window's "
                              f"frames: {num_scale} scale + {window - num_scale} streamed)")
        return window, overlap


# -- the similarity between two windows ----------------------------------------------------------------------


def depth_ratio_scale(depth_a: torch.Tensor, depth_b: torch.Tensor, dtype: torch.dtype = torch.float32
                      ) -> torch.Tensor:
    """Per-batch median of depth_a / depth_b over finite pixels with |depth_b| > eps, in [1e-3, 1e3].

    The reference computes it in float32 (the default `dtype`); `torch.median` takes the lower middle value for an
    even count, as the reference does.
    """
    B = depth_a.shape[0]
    a = depth_a.to(dtype).reshape(B, -1)
    b = depth_b.to(dtype).reshape(B, -1)
    ok = torch.isfinite(a) & torch.isfinite(b) & (b.abs() > torch.finfo(torch.float32).eps)
    scales = [(a[i, ok[i]] / b[i, ok[i]]).median() if ok[i].any() else a.new_tensor(1.0) for i in range(B)]
    return torch.stack(scales).clamp(min=1e-3, max=1e3)


def _c2w(pose_enc: torch.Tensor, alignment: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(camera-to-world rotation, camera centre) of encodings [..., 9] under the chosen reading of the slots."""
    R = quat_xyzw_to_mat(pose_enc[..., 3:7])
    if alignment == "reference":  # slots read as (centre, c2w quaternion), as gct_stream_window.py does
        return R, pose_enc[..., :3]
    R_wc = R.transpose(-1, -2)
    return R_wc, -(R_wc @ pose_enc[..., :3, None])[..., 0]


def pairwise_alignment(prev_tail: dict[str, torch.Tensor], curr_head: dict[str, torch.Tensor], alignment: str
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s [B], R [B,3,3], t [B,3]) mapping the current window into the previous window's (warped) frame.

    Args:
        prev_tail: the previous window's last `overlap` frames after warping: `pose_enc [B,n,9]`, `depth
            [B,n,H,W]`, `is_keyframe [n]` (bool).
        curr_head: the current window's first frames, raw, same keys.
        alignment: "reference" or "w2c" (module docstring).
    """
    n = min(prev_tail["pose_enc"].shape[1], curr_head["pose_enc"].shape[1])
    paired = torch.nonzero(prev_tail["is_keyframe"][:n] & curr_head["is_keyframe"][:n]).flatten().tolist()
    idx = paired[-1] if paired else 0
    pairs = paired if paired else [0]
    dtype = prev_tail["pose_enc"].dtype
    work = dtype if alignment == "reference" else torch.float64
    Ra, ca = _c2w(prev_tail["pose_enc"][:, idx].to(work), alignment)
    Rb, cb = _c2w(curr_head["pose_enc"][:, idx].to(work), alignment)
    R_ab = Ra @ Rb.transpose(-1, -2)
    ratio_dtype = torch.float32 if alignment == "reference" else torch.float64
    s = depth_ratio_scale(prev_tail["depth"][:, pairs], curr_head["depth"][:, pairs], ratio_dtype).to(work)
    t = ca - s[:, None] * (R_ab @ cb[..., None])[..., 0]
    return s.to(dtype), R_ab.to(dtype), t.to(dtype)


def warp_frame(frame: dict[str, Any], s: torch.Tensor, R: torch.Tensor, t: torch.Tensor, alignment: str
               ) -> dict[str, Any]:
    """One frame's outputs mapped by (s, R, t): pose, depth (x s) and world points (s R p + t)."""
    out = dict(frame)
    pe = frame.get("pose_enc")
    if pe is not None:
        work = pe.dtype if alignment == "reference" else torch.float64
        R_, t_ = R.to(work), t.to(work)
        s_ = s.to(work)[:, None]
        R_wc, c = _c2w(pe.to(work), alignment)
        R_new = R_ @ R_wc
        c_new = s_ * (R_ @ c[..., None])[..., 0] + t_
        new = pe.clone()
        if alignment == "reference":
            new[:, :3] = c_new.to(pe.dtype)
            new[:, 3:7] = mat_to_quat_xyzw(R_new).to(pe.dtype)
        else:
            R_cw = R_new.transpose(-1, -2)
            new[:, :3] = (-(R_cw @ c_new[..., None])[..., 0]).to(pe.dtype)
            new[:, 3:7] = mat_to_quat_xyzw(R_cw).to(pe.dtype)
        out["pose_enc"] = new
    if frame.get("depth") is not None:
        out["depth"] = frame["depth"] * s.view(-1, *([1] * (frame["depth"].dim() - 1))).to(frame["depth"].dtype)
    wp = frame.get("world_points")
    if wp is not None:
        B = wp.shape[0]
        flat = wp.reshape(B, -1, 3)
        moved = torch.bmm(flat, R.transpose(1, 2).to(wp.dtype)) * s.view(B, 1, 1).to(wp.dtype) + t[:, None].to(wp.dtype)
        out["world_points"] = moved.reshape(wp.shape)
    return out


def _stack(frames: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"pose_enc": torch.stack([f["pose_enc"] for f in frames], dim=1),
            "depth": torch.stack([f["depth"][..., 0] for f in frames], dim=1),
            "is_keyframe": torch.tensor([f["is_keyframe"] for f in frames], dtype=torch.bool)}


# -- the streaming windowed session -------------------------------------------------------------------------


class LingBotWindowedSession:
    """Windowed LingBot over a live stream (see the module docstring); `push` / `flush` return emitted frames.

    Emitted frames are the session's frame dicts, warped into the first window's frame, with `frame_index` counted
    over the whole stream and `window` the window that produced them.

    Args:
        model: the LingBot model.
        stream: the per-window schedule and memory (scale frames, window memory, keyframes, semantics).
        windows: window sizes and the alignment.
        record: keep every window's raw outputs and similarity in `history` (tests, fixture runs).
        on_call: called with the window's `LingBotSession` after each of its model calls.
    """

    def __init__(self, model: LingBot, stream: LingBotStreamConfig | None = None,
                 windows: LingBotWindowConfig | None = None, *, record: bool = False,
                 on_call: Callable[[LingBotSession], None] | None = None) -> None:
        self.stream = stream or LingBotStreamConfig()
        self.windows = windows or LingBotWindowConfig()
        self.window_frames, self.overlap = self.windows.frames(self.stream.num_scale_frames,
                                                               self.stream.keyframe_interval)
        self.session = LingBotSession(model, self.stream)
        self.record = record
        self.on_call = on_call
        self.reset()

    def reset(self) -> None:
        self.session.reset()
        self.window_index = 0
        self.window_start = 0  # stream index of the current window's first frame
        self.frames_in = 0
        self._local = 0  # frames pushed into the current window
        self._images: deque[torch.Tensor] = deque(maxlen=self.overlap)
        self._raw: dict[int, dict[str, Any]] = {}  # current window's predicted, not yet released frames
        self._emitted = 0  # current window's frames emitted (a prefix)
        self._sim: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._prev_tail: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []

    @property
    def pending_frames(self) -> int:
        """Frames pushed and not emitted yet."""
        return self.frames_in - self.window_start - self._emitted

    def nbytes(self) -> int:
        held = sum(t.numel() * t.element_size() for t in self._images)
        return self.session.nbytes() + held

    def _feed(self, image: torch.Tensor) -> None:
        new = self.session.push(image)
        if new and self.on_call is not None:
            self.on_call(self.session)
        self._collect(new)

    def _collect(self, frames: list[dict[str, Any]]) -> None:
        for f in frames:
            self._raw[f["frame_index"]] = f
            if self.record:
                self.history[-1]["frames"].append(f)

    def _start_window(self) -> None:
        """Close the full current window (its tail becomes the next one's reference) and open the next one."""
        assert self._sim is not None
        tail = [warp_frame(self._raw[i], *self._sim, self.windows.alignment)
                for i in range(self.window_frames - self.overlap, self.window_frames)]
        self._prev_tail = _stack(tail)
        self.window_index += 1
        self.window_start += self.window_frames - self.overlap
        self.session.reset()
        self._raw, self._emitted, self._sim, self._local = {}, 0, None, 0
        self._open_record()
        for image in list(self._images):
            self._local += 1
            self._feed(image)

    def _open_record(self) -> None:
        if self.record:
            self.history.append({"start": self.window_start, "frames": [], "sim": None})

    @torch.inference_mode()
    def push(self, image: torch.Tensor) -> list[dict[str, Any]]:
        """Add one frame; returns the frames whose final (stitched) prediction is now known."""
        if self.frames_in == 0:
            self._open_record()
        if self._local == self.window_frames:
            self._start_window()
        self.frames_in += 1
        self._local += 1
        self._images.append(image)
        self._feed(image)
        return self._release(final=False)

    @torch.inference_mode()
    def flush(self) -> list[dict[str, Any]]:
        """End of stream: the current window is the last one; everything left is emitted."""
        new = self.session.flush()
        if new and self.on_call is not None:
            self.on_call(self.session)
        self._collect(new)
        return self._release(final=True)

    def _similarity(self, final: bool) -> None:
        if self._sim is not None:
            return
        if self.window_index == 0 or self._prev_tail is None:
            ref = next(iter(self._raw.values()))["pose_enc"]
            B = ref.shape[0]
            self._sim = (ref.new_ones(B), torch.eye(3, dtype=ref.dtype, device=ref.device).expand(B, 3, 3).clone(),
                         ref.new_zeros(B, 3))
        else:
            n = min(self.overlap, len(self._raw))
            if n < self.overlap and not final:
                return
            head = _stack([self._raw[i] for i in range(n)])
            self._sim = pairwise_alignment(self._prev_tail, head, self.windows.alignment)
        if self.record:
            self.history[-1]["sim"] = self._sim

    def _release(self, final: bool) -> list[dict[str, Any]]:
        if not self._raw:
            return []
        self._similarity(final)
        if self._sim is None:
            return []
        limit = self._local if final else self.window_frames - self.overlap
        out = []
        while self._emitted < limit and self._emitted in self._raw:
            local = self._emitted
            frame = warp_frame(self._raw[local], *self._sim, self.windows.alignment)
            frame["window"] = self.window_index
            frame["window_frame_index"] = local
            frame["frame_index"] = self.window_start + local
            out.append(frame)
            self._emitted += 1
            del self._raw[local]  # emitted frames are neither the next window's reference nor needed for this one
        return out

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(meta, arrays): the current window's session, buffered images, unreleased frames, reference tail and
        similarity. Restored frames carry no `pose_enc_list` (nothing downstream of the stitching reads it)."""
        session_meta, session_arrays = self.session.state()
        meta: dict[str, Any] = {"session": session_meta, "window_index": self.window_index,
                                "window_start": self.window_start, "frames_in": self.frames_in, "local": self._local,
                                "emitted": self._emitted, "images": len(self._images), "raw": {},
                                "has_sim": self._sim is not None, "has_tail": self._prev_tail is not None}
        arrays = {f"session.{k}": v for k, v in session_arrays.items()}
        for i, image in enumerate(self._images):
            arrays[f"images.{i}"] = image.cpu().clone()
        for local, frame in self._raw.items():
            scalars = {k: frame[k] for k in _FRAME_SCALARS}
            meta["raw"][str(local)] = scalars | {"token_index": list(frame["token_index"])}
            for k in _FRAME_TENSORS:
                if frame.get(k) is not None:
                    arrays[f"raw.{local}.{k}"] = frame[k].cpu().clone()
        if self._sim is not None:
            arrays["sim.s"], arrays["sim.R"], arrays["sim.t"] = (x.cpu().clone() for x in self._sim)
        for k, v in (self._prev_tail or {}).items():
            arrays[f"tail.{k}"] = v.cpu().clone()
        return meta, arrays

    def load_state(self, meta: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
        """Restore `state()` into this (identically configured) windowed session."""
        device = next(self.session.model.parameters()).device
        self.reset()
        self.session.load_state(meta["session"], {k[8:]: v for k, v in arrays.items() if k.startswith("session.")})
        self.window_index, self.window_start = int(meta["window_index"]), int(meta["window_start"])
        self.frames_in, self._local, self._emitted = int(meta["frames_in"]), int(meta["local"]), int(meta["emitted"])
        for i in range(int(meta["images"])):
            self._images.append(arrays[f"images.{i}"].to(device))
        for key, scalars in meta["raw"].items():
            local = int(key)
            frame: dict[str, Any] = {k: scalars[k] for k in _FRAME_SCALARS}
            frame["token_index"] = tuple(scalars["token_index"])
            for k in _FRAME_TENSORS:
                if f"raw.{local}.{k}" in arrays:
                    frame[k] = arrays[f"raw.{local}.{k}"].to(device)
            self._raw[local] = frame
        if meta["has_sim"]:
            self._sim = (arrays["sim.s"].to(device), arrays["sim.R"].to(device), arrays["sim.t"].to(device))
        if meta["has_tail"]:
            self._prev_tail = {k: arrays[f"tail.{k}"].to(device) for k in ("pose_enc", "depth", "is_keyframe")}


_FRAME_TENSORS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
_FRAME_SCALARS = ("frame_index", "frame_type", "is_keyframe", "rope_t")


def run_windowed(model: LingBot, images: torch.Tensor, stream: LingBotStreamConfig, windows: LingBotWindowConfig,
                 on_call: Callable[[LingBotSession], None] | None = None) -> dict[str, torch.Tensor]:
    """A whole clip `images [B,S,3,H,W]` through `LingBotWindowedSession`, under the reference's output names
    (merged `pose_enc`, `depth`, `depth_conf`, `frame_type`, `is_keyframe`, `chunk_scales`, `chunk_transforms`, and
    `window.{w}.*` raw per-window predictions). Frames are pushed one at a time, as a live stream would."""
    session = LingBotWindowedSession(model, stream, windows, record=True, on_call=on_call)
    emitted: list[dict[str, Any]] = []
    for f in range(images.shape[1]):
        emitted += session.push(images[:, f])
    emitted += session.flush()
    if [e["frame_index"] for e in emitted] != list(range(images.shape[1])):
        raise AssertionError(f"windowed frames emitted out of order or twice: {[e['frame_index'] for e in emitted]}")
    out: dict[str, torch.Tensor] = {}

    def put(prefix: str, frames: list[dict[str, Any]]) -> None:
        out[prefix + "pose_enc"] = torch.stack([f["pose_enc"] for f in frames], dim=1)
        out[prefix + "depth"] = torch.stack([f["depth"] for f in frames], dim=1)
        out[prefix + "depth_conf"] = torch.stack([f["depth_conf"] for f in frames], dim=1)
        for name in ("world_points", "world_points_conf"):
            if name in frames[0]:
                out[prefix + name] = torch.stack([f[name] for f in frames], dim=1)
        ftype = torch.tensor([[f["frame_type"] for f in frames]], dtype=torch.uint8)
        out[prefix + "frame_type"] = ftype
        out[prefix + "is_keyframe"] = ftype != FRAME_NONKEY

    put("", emitted)
    scales, transforms = [], []
    for w, record in enumerate(session.history):
        put(f"window.{w}.", record["frames"])
        s, R, t = record["sim"]
        T = torch.eye(4, dtype=R.dtype).repeat(R.shape[0], 1, 1)
        T[:, :3, :3], T[:, :3, 3] = R, t
        scales.append(s)
        transforms.append(T)
    out["chunk_scales"] = torch.stack(scales, dim=1)
    out["chunk_transforms"] = torch.stack(transforms, dim=1)
    return out
