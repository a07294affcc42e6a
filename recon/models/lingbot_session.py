"""Streaming inference for LingBot-Map: one session per stream, frame by frame, with the published bounded memory.

`session = model.new_session(num_scale_frames=8, sliding_window=64, keyframe_interval=1)`, then `session.push(image)`
per frame and `session.flush()` at the end. The schedule is the reference's `GCTStream.inference_streaming`
(../shared/reference/lingbot_map.md §5-6, Robbyant/lingbot-map@4cd9860 `models/gct_stream.py`):
1. the first `num_scale_frames` frames are buffered and run as **one call** (bidirectional attention among them,
   all stored): they are the scale frames (`scale_token[:, 0]`) and, as the first cached frames, the anchors;
2. every later frame runs alone. Frame i is a keyframe when `keyframe_interval <= 1` or
   `(i - num_scale) % keyframe_interval == 0`; every frame gets a full prediction.
3. the aggregator's global layers attend to `recon.memory.anchor_window.AnchorWindowMemory`: anchors, the last
   `sliding_window` stored frames, and the trajectory memory of evicted frames' special tokens;
4. 3D-RoPE temporal indices count stored keyframes: a call starts at the counter, which advances only after a
   keyframe call (so a non-keyframe shares its index with the next keyframe, reference quirk 2);
5. the camera head keeps one KV cache per (refinement iteration, trunk layer); scale frames and keyframes append
   their camera token, non-keyframes attend to the cache and themselves without storing.

Non-keyframes in the aggregator (`keyframe_semantics`):
- `"skip"` (default): attended, not stored, nothing evicted: what the reference's default FlashInfer path does and
  what its README's 2026-04-24 fix intends;
- `"store"`: stored and evicted like keyframes, which is what the reference's SDPA fallback does (it never reads the
  skip flag; quirk 1, fixture `lingbot_tiny_stream/outputs.safetensors`).

Bounds (the reference bounds neither the trajectory memory nor the camera-head cache; its 3D-RoPE table of
`max_frame_num` = 1024 rows ends every run first):
- `trajectory_frames`: evicted frames whose specials are kept (None: `max_frame_num - anchors - window`, the most a
  reference run can ever hold; 0: unbounded as the reference);
- `camera_window`: keyframe entries kept in each camera cache besides the scale frames (None: `max_frame_num -
  num_scale_frames`, again the reference's reach; 0: unbounded, the reference);
- past `max_frame_num` temporal positions the RoPE extrapolates (the reference fails), with a one-time warning.

All state lives in the session (never on the shared model), so sessions do not interfere and `reset()` starts over.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from recon.errors import BackendError, ConfigError, StateError
from recon.memory.anchor_window import AnchorWindowMemory, PeekView
from recon.memory.kv_cache import StreamingMemory
from recon.memory.policies import AttentionSinkPolicy
from recon.utils.log import WarnOnce

if TYPE_CHECKING:
    from recon.models.lingbot import LingBot

logger = logging.getLogger(__name__)

KEYFRAME_SEMANTICS = ("skip", "store")
TRAJECTORY_MODES = ("special", "camera", "none")
FRAME_SCALE, FRAME_KEY, FRAME_NONKEY = 0, 1, 2
STATE_VERSION = 1


@dataclass
class LingBotStreamConfig:
    """The streaming schedule and memory sizes (defaults: demo.py's, with the bounds described in the module doc).

    Attributes:
        num_scale_frames: frames of the first, bidirectional call (8).
        anchor_frames: first stored frames kept for good (`kv_cache_scale_frames`; None: `num_scale_frames`).
        sliding_window: most recent stored frames kept in full (64).
        keyframe_interval: every N-th frame after the scale frames is a keyframe (1: all).
        keyframe_semantics: "skip" or "store" (see the module docstring).
        trajectory: what an evicted frame leaves in the trajectory memory: "special" (camera, registers, scale;
            published), "camera" (`kv_cache_camera_only`), "none" (`kv_cache_cross_frame_special=False`).
        trajectory_frames: bound of the trajectory memory in frames (None: auto; 0: unbounded).
        camera_window: keyframes kept in the camera-head caches besides the scale frames (None: auto; 0: unbounded).
        keep_tokens: also return each frame's aggregator outputs (tests, fixture runs).
    """

    num_scale_frames: int = 8
    anchor_frames: int | None = None
    sliding_window: int = 64
    keyframe_interval: int = 1
    keyframe_semantics: str = "skip"
    trajectory: str = "special"
    trajectory_frames: int | None = None
    camera_window: int | None = None
    keep_tokens: bool = False

    def __post_init__(self) -> None:
        for name in ("num_scale_frames", "sliding_window", "keyframe_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"lingbot: {name} must be a positive integer, got {value!r}")
        for name in ("anchor_frames", "trajectory_frames", "camera_window"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"lingbot: {name} must be None or an integer >= 0, got {value!r}")
        if self.keyframe_semantics not in KEYFRAME_SEMANTICS:
            raise ConfigError(f"lingbot: keyframe_semantics must be one of {KEYFRAME_SEMANTICS}, "
                              f"got {self.keyframe_semantics!r}")
        if self.trajectory not in TRAJECTORY_MODES:
            raise ConfigError(f"lingbot: trajectory must be one of {TRAJECTORY_MODES}, got {self.trajectory!r}")

    @property
    def anchors(self) -> int:
        return self.num_scale_frames if self.anchor_frames is None else self.anchor_frames

    def resolved_trajectory_frames(self, max_frame_num: int) -> int:
        if self.trajectory_frames is not None:
            return self.trajectory_frames
        return max(max_frame_num - self.anchors - self.sliding_window, 1)

    def resolved_camera_window(self, max_frame_num: int) -> int:
        if self.camera_window is not None:
            return self.camera_window
        return max(max_frame_num - self.num_scale_frames, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SessionResetError(BackendError):
    """A model call failed mid-step; the session was reset (its memory would otherwise be half-updated)."""


def is_keyframe(index: int, num_scale: int, interval: int) -> bool:
    """The reference's rule (gct_stream.py:450): scale frames, then every `interval`-th later frame."""
    return index < num_scale or interval <= 1 or (index - num_scale) % interval == 0


class LingBotSession:
    """One stream's state over a (shared, read-only) LingBot model; see the module docstring."""

    def __init__(self, model: LingBot, config: LingBotStreamConfig | None = None) -> None:
        self.model = model
        self.config = cfg = config or LingBotStreamConfig()
        mcfg = model.config
        self.max_frame_num = mcfg.rope3d.max_frame_num
        traj_tokens = {"special": mcfg.num_special_tokens, "camera": 1, "none": 0}[cfg.trajectory]
        self.trajectory_frames = cfg.resolved_trajectory_frames(self.max_frame_num)
        self.memory = AnchorWindowMemory(mcfg.aggregator.depth, cfg.anchors, cfg.sliding_window, traj_tokens,
                                         self.trajectory_frames)
        self.camera_window = cfg.resolved_camera_window(self.max_frame_num)
        head = model.camera_head
        self.camera_memory: StreamingMemory | None = None
        self.camera_caches: list[list[Any]] = []
        if head is not None:
            policy = AttentionSinkPolicy(cfg.num_scale_frames + self.camera_window) if self.camera_window else None
            capacity = cfg.num_scale_frames + self.camera_window + 1 if self.camera_window else 0
            self.camera_memory = StreamingMemory(head.num_iterations * head.trunk_depth, policy, capacity)
            flat = self.camera_memory.caches
            self.camera_caches = [flat[i * head.trunk_depth:(i + 1) * head.trunk_depth]
                                  for i in range(head.num_iterations)]
        self._peek_caches = [[PeekView(c) for c in row] for row in self.camera_caches]
        self._warn = WarnOnce(logger)
        self.reset()

    # -- state ------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every frame (caches, counters, resolution); allocated storage is reused."""
        self.memory.reset()
        if self.camera_memory is not None:
            self.camera_memory.reset()
        self._pending: list[torch.Tensor] = []
        self.num_frames = 0  # frames predicted so far
        self.num_scale = 0  # frames of the scale call, once it ran
        self.t_next = 0  # the reference's total_frames_processed
        self.image_hw: tuple[int, int] | None = None
        self.last_call: dict[str, Any] | None = None

    @property
    def started(self) -> bool:
        return self.num_scale > 0

    @property
    def pending_frames(self) -> int:
        """Frames pushed but not predicted yet (the scale phase waits for `num_scale_frames`)."""
        return len(self._pending)

    def camera_cache_lengths(self) -> list[list[int]]:
        """Entries per camera-head cache `[iteration][layer]`."""
        return [[len(c) for c in row] for row in self.camera_caches]

    def nbytes(self) -> int:
        """Bytes of allocated cache storage (aggregator and camera head)."""
        cam = self.camera_memory.nbytes() if self.camera_memory is not None else 0
        return self.memory.nbytes() + cam

    # -- streaming ------------------------------------------------------------------------------------------
    def _check(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4 or image.shape[1] != 3:
            raise BackendError(f"lingbot session expects [3,H,W] or [B,3,H,W], got {tuple(image.shape)}")
        hw = (int(image.shape[-2]), int(image.shape[-1]))
        p = self.model.config.patch_size
        if hw[0] % p or hw[1] % p:
            raise BackendError(f"image size {hw[0]}x{hw[1]} is not a multiple of the patch size {p}")
        if self.image_hw is not None and hw != self.image_hw:
            raise BackendError(f"resolution changed inside a streaming session: {self.image_hw[0]}x{self.image_hw[1]}"
                               f" -> {hw[0]}x{hw[1]} (HxW); call reset() (or start a new session) first")
        self.image_hw = hw
        return image

    @torch.inference_mode()
    def push(self, image: torch.Tensor) -> list[dict[str, Any]]:
        """Add one frame (`[3,H,W]` or `[B,3,H,W]` in [0,1], model dtype and device); returns the frames predicted
        by this call: none while the scale frames are buffered, then all of them, then one per frame."""
        image = self._check(image)
        if not self.started:
            self._pending.append(image)
            if len(self._pending) < self.config.num_scale_frames:
                return []
            return self._run_scale()
        return self._call(image.unsqueeze(1))

    @torch.inference_mode()
    def flush(self) -> list[dict[str, Any]]:
        """End of stream: predict buffered scale frames (a stream shorter than `num_scale_frames`)."""
        return self._run_scale() if self._pending else []

    def _run_scale(self) -> list[dict[str, Any]]:
        images = torch.stack(self._pending, dim=1)
        self._pending = []
        return self._call(images)

    def _call(self, images: torch.Tensor) -> list[dict[str, Any]]:
        B, S = images.shape[:2]
        scale = not self.started
        first = self.num_frames
        key = scale or is_keyframe(first, self.num_scale, self.config.keyframe_interval)
        store = key or self.config.keyframe_semantics == "store"
        gh, gw = (d // self.model.config.patch_size for d in images.shape[-2:])
        P = gh * gw + self.model.patch_start_idx
        t_start = self.t_next
        if t_start + S > self.max_frame_num:
            self._warn("rope", "lingbot: 3D-RoPE temporal index %d passes the model's max_frame_num %d (the reference "
                       "cannot go on here): positions are extrapolated; use --mode windowed or a larger keyframe "
                       "interval for streams this long", t_start + S - 1, self.max_frame_num)
        self.memory.begin_step(range(first, first + S), P, store=store)
        caches = self.camera_caches if key else self._peek_caches
        cam = self.camera_memory
        if key and cam is not None:
            cam.begin_frame()
        try:
            out = self.model.forward_frames(images, self.memory, caches if caches else None, first_frame=first == 0,
                                            scale_frames=scale, t_start=t_start)
        except (RuntimeError, ValueError) as e:
            self.reset()
            raise SessionResetError(f"lingbot session: the model call failed at frame {first} ({e}); the session "
                                    "was reset") from e
        if key and cam is not None:
            cam.end_frame()
        if scale:
            self.num_scale = S
        if key:
            self.t_next += S
        self.last_call = {"first_frame": first, "num_frames": S, "t_range": (t_start, t_start + S),
                          "keyframe": key, "stored": store}
        self.num_frames += S
        ftype = FRAME_SCALE if scale else (FRAME_KEY if key else FRAME_NONKEY)
        return [self._frame_output(out, j, first + j, ftype, t_start + j, scale) for j in range(S)]

    def _frame_output(self, out: dict[str, Any], j: int, index: int, ftype: int, t: int, scale: bool
                      ) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "frame_index": index, "frame_type": ftype, "is_keyframe": ftype != FRAME_NONKEY, "rope_t": t,
            "token_index": (0 if index == 0 else 1, 0 if scale else 1),
        }
        if "pose_enc" in out:
            frame["pose_enc"] = out["pose_enc"][:, j]
            frame["pose_enc_list"] = [p[:, j] for p in out["pose_enc_list"]]
        for name in ("depth", "depth_conf", "world_points", "world_points_conf"):
            if name in out:
                frame[name] = out[name][:, j]
        if self.config.keep_tokens:
            frame["aggregated_tokens"] = [t_[:, j] for t_ in out["aggregated_tokens"]]
        return frame

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(meta, arrays) of everything the next frame depends on: memory, camera caches, counters, pending."""
        meta, arrays = self.memory.state()
        meta = {"version": STATE_VERSION, "memory": meta, "num_frames": self.num_frames, "num_scale": self.num_scale,
                "t_next": self.t_next, "image_hw": list(self.image_hw) if self.image_hw else None,
                "pending": len(self._pending),
                "camera_frame_index": self.camera_memory.frame_index if self.camera_memory else 0}
        arrays = {f"memory.{k}": v for k, v in arrays.items()}
        for i, cache in enumerate(self.camera_memory or []):
            if len(cache):
                arrays[f"camera.{i}.k"] = cache.keys().cpu().clone()
                arrays[f"camera.{i}.v"] = cache.values().cpu().clone()
        for i, image in enumerate(self._pending):
            arrays[f"pending.{i}"] = image.cpu().clone()
        return meta, arrays

    def load_state(self, meta: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
        """Restore `state()` into this (freshly configured) session."""
        if meta.get("version") != STATE_VERSION:
            raise StateError(f"lingbot session state version {meta.get('version')} != {STATE_VERSION}")
        device = next(self.model.parameters()).device
        self.reset()
        self.memory.load_state(meta["memory"], {k[7:]: v for k, v in arrays.items() if k.startswith("memory.")},
                               device)
        self.num_frames, self.num_scale, self.t_next = int(meta["num_frames"]), int(meta["num_scale"]), \
            int(meta["t_next"])
        self.image_hw = tuple(meta["image_hw"]) if meta["image_hw"] else None
        self._pending = [arrays[f"pending.{i}"].to(device) for i in range(int(meta["pending"]))]
        cam = self.camera_memory
        if cam is None:
            return
        # Re-append through the policy: the scale entries first, as frame 0, so they become its anchors again.
        cam.frame_index = 0
        cam.begin_frame()
        saved = [(arrays.get(f"camera.{i}.k"), arrays.get(f"camera.{i}.v")) for i in range(len(cam))]
        for cache, (k, v) in zip(cam, saved, strict=True):
            if k is not None:
                a = min(self.num_scale, k.shape[2])
                cache.update(k[:, :, :a].to(device), v[:, :, :a].to(device))
        cam.end_frame()
        for cache, (k, v) in zip(cam, saved, strict=True):
            if k is not None and k.shape[2] > min(self.num_scale, k.shape[2]):
                a = self.num_scale
                cache.append(k[:, :, a:].to(device), v[:, :, a:].to(device))
        cam.frame_index = int(meta["camera_frame_index"])
