"""Per-frame streaming inference for the VGGT family (StreamVGGT; InfiniteVGGT with a pruning policy).

`session = model.new_session(camera_cache="reference" | "per_iteration")`, then `session.step(image)` once per
frame. The session owns all streaming state, so two sessions on one model never interfere and `reset()` really
starts over (the published code keeps anchors and scores on the modules and never resets them, reference notes
§4.1):
- `memory`: a `recon.memory.StreamingMemory` with one KV cache per aggregator global block (post-norm, post-RoPE
  keys in preallocated storage) and the eviction policy (default: unbounded, i.e. StreamVGGT);
- `camera_memory`: a second `StreamingMemory` for the camera-trunk caches (own policy, default unbounded as in the
  published code), viewed as `camera_caches[iteration][layer]`:
  - `"reference"`: one cache per trunk layer shared by all refinement iterations, which is what the published
    StreamVGGT/InfiniteVGGT streaming code does (quirk A, wzzheng/StreamVGGT#27): iteration k of frame t sees all
    iterations of earlier frames and iterations <= k of frame t; the cache grows by `num_iterations` per frame;
  - `"per_iteration"`: one cache per (iteration, layer); equals the block-causal batch pass;
- the frame counter (the session's first frame uses the frame-0 camera/register tokens) and the resolution.

The published code never bounds the camera cache; pass `camera_policy` to bound it (issue 5).

`static=True` gives every cache fixed storage (`recon.memory.kv_cache.StaticKVCache`): from the second frame on a
step has the same shapes every frame and reads nothing back to the host, so it can be captured by CUDA graphs or
compiled once (`torch.compile`). It needs bounded policies for both memories (the aggregator's at `capacity`
entries per layer, the camera head's a window) and attends over the whole storage with a key mask.

`compile=True` (or a dict of `torch.compile` options) compiles the model part of a static step (aggregator, camera
head, dense heads; the frame bookkeeping stays in Python) once, on the second frame: the first allocates the
caches and uses the frame-0 tokens. Default options: CUDA graphs on CUDA (`mode="reduce-overhead"`), the default
inductor mode elsewhere. A step reads no Python number that changes per frame, so it compiles to one graph.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from recon.errors import BackendError, ConfigError
from recon.memory.kv_cache import EvictionPolicy, KVCache, StreamingMemory

if TYPE_CHECKING:
    from recon.models.vggt import VGGT

logger = logging.getLogger(__name__)

CAMERA_CACHE_MODES = ("reference", "per_iteration")


class StreamingSession:
    """One stream's state over a (shared, read-only) VGGT-family model.

    Args:
        model: the model; its weights are not modified.
        camera_cache: "reference" (quirk A, published behaviour) or "per_iteration" (equals the batch pass).
        policy: eviction policy of the aggregator caches (None: unbounded).
        capacity: initial per-layer cache capacity in tokens (0: grow by doubling from the first frame).
        track_token_ids: keep token ids in the aggregator caches (pruning logs, tests).
        camera_policy: eviction policy of the camera-trunk caches (None: unbounded). Its layer index is the trunk
            layer in "reference" mode and `iteration * trunk_depth + layer` in "per_iteration" mode.
        static: fixed-shape caches (see the module docstring); `capacity` is then the per-layer bound.
        compile: compile the static step with `torch.compile` (True: default options; a dict: those options).
    """

    def __init__(self, model: VGGT, camera_cache: str = "reference", policy: EvictionPolicy | None = None,
                 capacity: int = 0, track_token_ids: bool = False,
                 camera_policy: EvictionPolicy | None = None, static: bool = False,
                 compile: bool | dict[str, Any] = False) -> None:
        if camera_cache not in CAMERA_CACHE_MODES:
            raise ConfigError(f"camera_cache must be one of {CAMERA_CACHE_MODES}, got {camera_cache!r}")
        if compile and not static:
            raise ConfigError("compile needs static=True: dynamic caches change shape every frame (a recompile each)")
        self._compile_options: dict[str, Any] | None = (dict(compile) if isinstance(compile, dict) else {}) \
            if compile else None
        self._compiled: Any = None
        self.model = model
        self.camera_cache = camera_cache
        self.static = static
        self.memory = StreamingMemory(model.config.aggregator.depth, policy, capacity, track_token_ids, static)
        head = model.camera_head
        self.camera_caches: list[list[KVCache]] = []
        self.camera_memory: StreamingMemory | None = None
        if head is not None:
            per_iter = camera_cache == "per_iteration"
            n = head.trunk_depth * (head.num_iterations if per_iter else 1)
            if static and camera_policy is None:
                raise ConfigError("static shapes need a bounded camera-head cache: pass camera_policy (e.g. "
                                  "recon.memory.policies.camera_window_policy; the infinitevggt backend's "
                                  "camera_window)")
            self.camera_memory = StreamingMemory(n, camera_policy, static=static,
                                                 appends_per_frame=1 if per_iter else head.num_iterations)
            self._view_camera_caches()
        self.image_hw: tuple[int, int] | None = None
        self._keep = model.head_layers
        self.reset()

    def _view_camera_caches(self) -> None:
        """`camera_caches[iteration][layer]` over the flat camera memory (see the module docstring)."""
        assert self.camera_memory is not None and self.model.camera_head is not None
        head, flat = self.model.camera_head, self.camera_memory.caches
        per_iter = self.camera_cache == "per_iteration"
        self.camera_caches = [flat[it * head.trunk_depth:(it + 1) * head.trunk_depth] if per_iter else flat
                              for it in range(head.num_iterations)]

    def attach_arena(self, arena: Any, owner: str) -> list[KVCache]:
        """Keep both memories' caches in pages of a node's `recon.memory.paged.KVArena` (a serving node with
        `--kv-memory`); the contents carry over. Returns every paged cache (what an offload moves)."""
        caches = self.memory.attach_arena(arena, owner)
        if self.camera_memory is not None:
            caches += self.camera_memory.attach_arena(arena, owner)
            self._view_camera_caches()
        return caches

    @property
    def num_frames(self) -> int:
        """Frames processed since the last reset."""
        return self.memory.frame_index

    def reset(self) -> None:
        """Forget every frame: caches, policy state, frame counter and resolution."""
        self.memory.reset()
        if self.camera_memory is not None:
            self.camera_memory.reset()
        self.image_hw = None

    def camera_cache_lengths(self) -> list[list[int]]:
        """Entries per camera-trunk cache, `[iteration][layer]` (all rows equal in "reference" mode)."""
        return [[len(c) for c in row] for row in self.camera_caches]

    def nbytes(self) -> int:
        """Bytes of allocated cache storage (aggregator and camera head)."""
        return self.memory.nbytes() + (self.camera_memory.nbytes() if self.camera_memory is not None else 0)

    def export_state(self) -> dict[str, Any]:
        """The session's streaming state for a checkpoint: both memories (caches and policy state) and the grid."""
        return {"memory": self.memory.export_state(),
                "camera_memory": self.camera_memory.export_state() if self.camera_memory is not None else None,
                "image_hw": list(self.image_hw) if self.image_hw else None, "camera_cache": self.camera_cache}

    def import_state(self, state: dict[str, Any]) -> None:
        """Continue from an `export_state` of a session on the same model with the same cache layout."""
        from recon.errors import StateError

        if state["camera_cache"] != self.camera_cache:
            raise StateError(f"streaming session: the state uses camera_cache={state['camera_cache']!r}, this "
                             f"session {self.camera_cache!r}")
        if (state["camera_memory"] is None) != (self.camera_memory is None):
            raise StateError("streaming session: the state and this model differ in having a camera head")
        self.reset()
        self.memory.import_state(state["memory"])
        if self.camera_memory is not None:
            self.camera_memory.import_state(state["camera_memory"])
        self.image_hw = tuple(state["image_hw"]) if state["image_hw"] else None

    @torch.inference_mode()
    def step(self, image: torch.Tensor) -> dict[str, Any]:
        """Process one frame.

        Args:
            image: `[3, H, W]` or `[B, 3, H, W]` in [0, 1], in the model's dtype and device (H, W multiples of
                the patch size). The resolution must stay the same within a session.

        Returns:
            dict for this frame: `pose_enc [B,9]`, `pose_enc_list` (one `[B,9]` per refinement iteration),
            `depth [B,H,W,1]`, `depth_conf [B,H,W]`, `world_points [B,H,W,3]`, `world_points_conf [B,H,W]`,
            `frame_index` (int).
        """
        image, hw, frame_index = self.begin_step(image)
        forward = self._forward
        if self._compile_options is not None and frame_index > 0:
            forward = self._compiled_forward(image.device)
        out: dict[str, Any] = {"frame_index": frame_index, **forward(image, hw)}
        self.end_step()
        return out

    def check_image(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """`image` as `[B,3,H,W]` and its `(H, W)`, refused when it does not fit this session's patch grid."""
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4 or image.shape[1] != 3:
            raise BackendError(f"session.step expects [3,H,W] or [B,3,H,W], got {tuple(image.shape)}")
        hw = (int(image.shape[-2]), int(image.shape[-1]))
        if self.image_hw is not None and hw != self.image_hw:
            raise BackendError(
                f"resolution changed inside a streaming session: {self.image_hw[0]}x{self.image_hw[1]} -> "
                f"{hw[0]}x{hw[1]} (HxW). The cached tokens, anchors and heads assume one patch grid; "
                "call reset() (or start a new session) to change resolution")
        p = self.model.config.patch_size
        if hw[0] % p or hw[1] % p:
            raise BackendError(f"image size {hw[0]}x{hw[1]} is not a multiple of the patch size {p}")
        return image, hw

    def begin_step(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], int]:
        """Check the frame and open it in both memories; returns (image `[B,3,H,W]`, (H, W), frame index).
        Shared with the batched step (recon.models.batched), which runs the model part for many sessions."""
        image, hw = self.check_image(image)
        self.image_hw = hw
        self.model.ensure_attention(image)
        frame_index = self.memory.frame_index
        self.memory.begin_frame()
        if self.camera_memory is not None:
            self.camera_memory.begin_frame()
        return image, hw, frame_index

    def end_step(self) -> None:
        """Close the frame in both memories (policy bookkeeping, frame counters)."""
        self.memory.end_frame()
        if self.camera_memory is not None:
            self.camera_memory.end_frame()

    def _forward(self, image: torch.Tensor, hw: tuple[int, int]) -> dict[str, Any]:
        """The model part of a step: aggregator against the caches, camera head, dense heads."""
        return model_step(self.model, image, hw, self.memory, self.camera_caches, self._keep)

    def _compiled_forward(self, device: torch.device) -> Any:
        if self._compiled is None:
            assert self._compile_options is not None
            options = dict(self._compile_options)
            if device.type == "cuda":
                options.setdefault("mode", "reduce-overhead")  # CUDA graphs: the step has static shapes
            logger.info("compiling the static streaming step (%s)", options or "default options")
            self._compiled = torch.compile(self._forward, **options)
        return self._compiled


def model_step(model: VGGT, image: torch.Tensor, hw: tuple[int, int], memory: Any, camera_caches: Any,
               keep: set[int]) -> dict[str, Any]:
    """Aggregator against `memory`, camera head against `camera_caches[iteration][layer]`, dense heads.

    One frame per batch element of `image [B,3,H,W]`; the memories are one session's (`StreamingMemory`) or one
    session per element (`recon.models.batched.BatchedMemory` and its camera caches)."""
    tokens, psi = model.aggregator.forward_step(image, memory, keep_layers=keep)
    out: dict[str, Any] = {}
    with torch.autocast(device_type=image.device.type, enabled=False):
        if model.camera_head is not None:
            poses = model.camera_head.forward_step(tokens, camera_caches)
            out["pose_enc_list"] = [p_[:, 0] for p_ in poses]
            out["pose_enc"] = out["pose_enc_list"][-1]
        for name, head in (("depth", model.depth_head), ("world_points", model.point_head)):
            if head is not None:
                values, conf = head(tokens, hw, psi)
                out[name], out[name + "_conf"] = values[:, 0], conf[:, 0]
    return out
