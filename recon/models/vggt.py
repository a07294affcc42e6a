"""VGGT and StreamVGGT: one model class, configured for full attention (VGGT) or block-causal frames
(StreamVGGT), with a per-frame streaming session (`new_session`, see recon.models.streaming).

References: facebookresearch/vggt@44b3afb (VGGT), wzzheng/StreamVGGT@3e28c5c (StreamVGGT); architecture notes
in ../shared/reference/vggt_family.md §1 and §3. Our own code; state-dict keys are the official ones, so
`model.pt` / `model.safetensors` / StreamVGGT `checkpoints.pth` load strictly once the track head is dropped by
`filter_track_head` (we do not build the track head: it is not needed for reconstruction).

Output conventions (model-native, converted to `T_world_cam` only at the backend boundary):
- `pose_enc [B,S,9]` = tx,ty,tz, qx,qy,qz,qw (scalar last), fov_h, fov_w; camera-from-world, world = camera 0,
  scale normalised (not metric);
- `depth [B,S,H,W,1]`, `world_points [B,S,H,W,3]` (camera-0 frame) and confidences `[B,S,H,W]` (> 1).

Precision: the heads run with autocast disabled (reference: `torch.cuda.amp.autocast(enabled=False)` around the
heads), so under bf16 autocast only the aggregator runs in bf16.

Building a full-size model without memory (for key/shape checks): `with torch.device("meta"): VGGT(VGGTConfig())`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recon.errors import ConfigError
from recon.kernels.attention import select_attention
from recon.models.layers.aggregator import Aggregator, AggregatorConfig
from recon.models.layers.attention import set_attention_impl
from recon.models.layers.camera_head import CameraHead, CameraHeadConfig
from recon.models.layers.dinov2 import DinoConfig
from recon.models.layers.dpt_head import DPTConfig, DPTHead

logger = logging.getLogger(__name__)

TRACK_HEAD_PREFIX = "track_head."


def filter_track_head(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the track head's keys (`track_head.*`, 394 in VGGT-1B) from a checkpoint state dict.

    recon does not build the track head (point tracking is not part of reconstruction), so official
    checkpoints (1797 keys) load strictly into our model (1403 keys) after this filter. Pure function; the
    input is not modified.
    """
    return {k: v for k, v in state_dict.items() if not k.startswith(TRACK_HEAD_PREFIX)}


@dataclass
class VGGTConfig:
    """Every knob of the VGGT / StreamVGGT family. Defaults are the full-size published models.

    Attributes:
        causal: False for VGGT (full global attention), True for StreamVGGT (block-causal over frames in batch
            mode; streaming sessions are causal by construction).
        enable_camera, enable_depth, enable_point: which heads exist (the track head is never built).
    """

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    causal: bool = False
    patch_embed: DinoConfig = field(default_factory=DinoConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    camera_head: CameraHeadConfig = field(default_factory=CameraHeadConfig)
    depth_head: DPTConfig = field(default_factory=DPTConfig)
    point_head: DPTConfig = field(default_factory=DPTConfig)
    enable_camera: bool = True
    enable_depth: bool = True
    enable_point: bool = True

    def __post_init__(self) -> None:
        if self.embed_dim % self.aggregator.num_heads:
            raise ConfigError(f"VGGTConfig.embed_dim {self.embed_dim} is not divisible by "
                              f"aggregator.num_heads {self.aggregator.num_heads}")
        for name, head in (("depth_head", self.depth_head), ("point_head", self.point_head)):
            bad = [i for i in head.intermediate_layer_idx if not 0 <= i < self.aggregator.depth]
            if bad:
                raise ConfigError(f"VGGTConfig.{name}.intermediate_layer_idx {bad} outside aggregator depth "
                                  f"{self.aggregator.depth}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pick(cls: type, d: Mapping[str, Any] | None, renames: Mapping[str, str] | None = None) -> Any:
    """Build dataclass `cls` from the keys of `d` it knows (after `renames`), ignoring descriptive extras."""
    if not d:
        return cls()
    names = set(cls.__dataclass_fields__)
    kwargs = {}
    for k, v in d.items():
        k = (renames or {}).get(k, k)
        if k in names:
            kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def config_from_fixture(model_cfg: Mapping[str, Any]) -> VGGTConfig:
    """Translate a golden fixture's `config.json["model"]` (reference constructor knobs) into a VGGTConfig."""
    top = model_cfg.get("top_level_class", "VGGT")
    return VGGTConfig(
        img_size=int(model_cfg.get("img_size", 518)),
        patch_size=int(model_cfg.get("patch_size", 14)),
        embed_dim=int(model_cfg.get("embed_dim", 1024)),
        causal=top != "VGGT",
        patch_embed=_pick(DinoConfig, model_cfg.get("patch_embed")),
        aggregator=_pick(AggregatorConfig, model_cfg.get("aggregator")),
        camera_head=_pick(CameraHeadConfig, model_cfg.get("camera_head")),
        depth_head=_pick(DPTConfig, model_cfg.get("depth_head")),
        point_head=_pick(DPTConfig, model_cfg.get("point_head")),
        enable_camera=model_cfg.get("camera_head") is not None,
        enable_depth=model_cfg.get("depth_head") is not None,
        enable_point=model_cfg.get("point_head") is not None,
    )


def tiny_config(causal: bool = True) -> VGGTConfig:
    """The tiny configuration of the golden fixtures (embed 32, 4 rounds, 2 heads): for tests and demos."""
    return VGGTConfig(
        embed_dim=32, causal=causal,
        patch_embed=DinoConfig(depth=2, num_heads=2),
        aggregator=AggregatorConfig(depth=4, num_heads=2),
        camera_head=CameraHeadConfig(trunk_depth=2, num_heads=4, mlp_ratio=2.0),
        depth_head=DPTConfig(features=16, out_channels=(16, 24, 32, 48), intermediate_layer_idx=(0, 1, 2, 3)),
        point_head=DPTConfig(features=16, out_channels=(16, 24, 32, 48), intermediate_layer_idx=(0, 1, 2, 3)),
    )


def build_heads(cfg: Any) -> tuple[CameraHead | None, DPTHead | None, DPTHead | None]:
    """The camera, depth and point heads of a VGGT-family model (VGGT, StreamVGGT, LingBot) from its config
    (`embed_dim`, `patch_size`, `camera_head`, `depth_head`, `point_head`, `enable_*`), built in that order."""
    dim_in = 2 * cfg.embed_dim
    camera = CameraHead(dim_in=dim_in, **asdict(cfg.camera_head)) if cfg.enable_camera else None
    depth = (DPTHead(dim_in=dim_in, patch_size=cfg.patch_size, output_dim=2, activation="exp",
                     conf_activation="expp1", **asdict(cfg.depth_head)) if cfg.enable_depth else None)
    point = (DPTHead(dim_in=dim_in, patch_size=cfg.patch_size, output_dim=4, activation="inv_log",
                     conf_activation="expp1", **asdict(cfg.point_head)) if cfg.enable_point else None)
    return camera, depth, point


class VGGT(nn.Module):
    """VGGT (config.causal=False) or StreamVGGT (config.causal=True).

    Args:
        config: the architecture (defaults: full size).
        device, dtype: where and in which dtype to create the parameters (e.g. `device="meta"`).
    """

    def __init__(self, config: VGGTConfig | None = None, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = cfg = config or VGGTConfig()
        with torch.device(device) if device is not None else nullcontext():
            agg = cfg.aggregator
            self.aggregator = Aggregator(
                img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=agg.depth,
                num_heads=agg.num_heads, mlp_ratio=agg.mlp_ratio, num_register_tokens=agg.num_register_tokens,
                qkv_bias=agg.qkv_bias, proj_bias=agg.proj_bias, ffn_bias=agg.ffn_bias, aa_order=agg.aa_order,
                aa_block_size=agg.aa_block_size, qk_norm=agg.qk_norm, qk_norm_eps=agg.qk_norm_eps,
                qk_norm_affine=agg.qk_norm_affine, rope_freq=agg.rope_freq, init_values=agg.init_values,
                norm_eps=agg.norm_eps, patch_embed=asdict(cfg.patch_embed),
            )
            self.camera_head, self.depth_head, self.point_head = build_heads(cfg)
        if dtype is not None:
            self.to(dtype)
        self._attention_key: tuple | None = None

    def select_attention(self, device: torch.device, dtype: torch.dtype, prefer: str | None = None) -> None:
        """Choose the attention kernels once through recon.kernels and hand them to every attention layer.

        The aggregator gets kernels for `dtype` (the autocast dtype when enabled); the camera head runs with
        autocast off (reference behaviour), so it gets kernels for the parameters' dtype: FlashAttention would
        refuse its fp32 tokens. Called lazily by `forward` and by streaming sessions.
        """
        head_dtype = next(self.parameters()).dtype
        key = (torch.device(device).type, dtype, head_dtype, prefer)
        if key == self._attention_key:
            return
        for module, dt in ((self.aggregator, dtype), (self.camera_head, head_dtype)):
            if module is None:
                continue
            impl = select_attention(device, dt, need_mask=False, prefer=prefer)
            masked = select_attention(device, dt, need_mask=True, prefer=prefer) if self.config.causal else impl
            set_attention_impl(module, impl, masked)
        self._attention_key = key

    def ensure_attention(self, images: torch.Tensor) -> None:
        """Select kernels for the dtype attention will actually run in (the autocast dtype when enabled)."""
        device_type = images.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else images.dtype
        self.select_attention(images.device, dtype)

    @property
    def head_layers(self) -> set[int]:
        """Aggregator entries read by the heads (others need not be kept)."""
        used: set[int] = set()
        if self.camera_head is not None:
            used.add(self.config.aggregator.depth - 1)
        for head in (self.depth_head, self.point_head):
            if head is not None:
                used.update(head.intermediate_layer_idx)
        return used

    def run_heads(self, tokens: list[torch.Tensor | None], image_hw: tuple[int, int], patch_start_idx: int,
                  causal: bool = False) -> dict[str, Any]:
        """Camera, depth and point heads on aggregator outputs, in the tokens' dtype with autocast off."""
        out: dict[str, Any] = {}
        device_type = next(t for t in tokens if t is not None).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            if self.camera_head is not None:
                poses = self.camera_head(tokens, causal=causal)
                out["pose_enc"] = poses[-1]
                out["pose_enc_list"] = poses
            if self.depth_head is not None:
                out["depth"], out["depth_conf"] = self.depth_head(tokens, image_hw, patch_start_idx)
            if self.point_head is not None:
                out["world_points"], out["world_points_conf"] = self.point_head(tokens, image_hw, patch_start_idx)
        return out

    def forward(self, images: torch.Tensor, keep_all_layers: bool = False) -> dict[str, Any]:
        """All frames in one pass (VGGT: full attention; StreamVGGT: block-causal).

        Args:
            images: `[S,3,H,W]` or `[B,S,3,H,W]` in [0, 1].
            keep_all_layers: return every aggregator entry under `aggregated_tokens` (default: only the
                entries the heads read are kept, which bounds memory like facebookresearch/vggt PR #473).

        Returns:
            dict with `pose_enc`, `pose_enc_list`, `depth`, `depth_conf`, `world_points`, `world_points_conf`,
            `aggregated_tokens` (list, None where not kept) and `patch_start_idx`.
        """
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [S,3,H,W] or [B,S,3,H,W], got {tuple(images.shape)}")
        self.ensure_attention(images)
        keep = None if keep_all_layers else self.head_layers
        tokens, psi = self.aggregator(images, causal=self.config.causal, keep_layers=keep)
        out = self.run_heads(tokens, tuple(images.shape[-2:]), psi, causal=self.config.causal)
        out["aggregated_tokens"] = tokens
        out["patch_start_idx"] = psi
        return out

    def new_session(self, camera_cache: str = "reference", policy: Any = None, capacity: int = 0,
                    track_token_ids: bool = False, camera_policy: Any = None, static: bool = False,
                    compile: bool | dict = False) -> Any:
        """Open a per-frame streaming session (see `recon.models.streaming.StreamingSession`).

        Args:
            camera_cache: "reference" (published StreamVGGT behaviour, quirk A) or "per_iteration" (batch-equal).
            policy: `recon.memory.EvictionPolicy` of the aggregator's global-attention caches (None: unbounded).
            capacity: initial per-layer cache capacity in tokens (0: grow by doubling).
            track_token_ids: keep an id per cached token and head (pruning logs, tests).
            camera_policy: eviction policy of the camera-trunk caches (None: unbounded, as published).
            static: fixed-shape caches for CUDA graphs / torch.compile (bounded policies required).
            compile: compile the static step (True, or `torch.compile` options).
        """
        from recon.models.streaming import StreamingSession

        return StreamingSession(self, camera_cache=camera_cache, policy=policy, capacity=capacity,
                                track_token_ids=track_token_ids, camera_policy=camera_policy, static=static,
                                compile=compile)


# --------------------------------------------------------------------------------------------------------------
# Building a ready-to-run model (backends, benchmarks): weights resolution, strict loading, random init.
# --------------------------------------------------------------------------------------------------------------

MODEL_CONFIGS = ("full", "tiny")


def sane_random_init(model: VGGT, seed: int = 0) -> VGGT:
    """Random weights that give usable-looking outputs (for demos, tests and benchmarks, never for accuracy).

    PyTorch's default init leaves the camera head's FoV near zero (relu-clipped), which would make the decoded
    focal length infinite, and the pose quaternion near zero. We draw the usual init from `seed`, then bias the
    pose branch towards identity rotation and ~60 degree fields of view, with a small weight so frames differ.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.device.type == "meta":
                continue
            if name.endswith("pos_embed") or name.endswith("_token") or name.endswith("tokens"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        head = model.camera_head
        if head is not None:
            fc2 = head.pose_branch.fc2
            fc2.weight.mul_(0.01)
            bias = torch.zeros_like(fc2.bias)
            if bias.numel() >= 9:
                # The raw pose accumulates over the refinement iterations: ~1 rad FoV after all of them.
                bias[6] = 1.0
                bias[7] = bias[8] = 1.0 / head.num_iterations
            fc2.bias.copy_(bias)
    return model


def build_vggt(*, weights: str | Path | None = None, weights_name: str = "vggt-1b", model_config: str = "full",
               causal: bool = False, random_init: bool = False, seed: int = 0,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> VGGT:
    """A VGGT (causal=False) or StreamVGGT (causal=True) ready for inference.

    Weights are resolved and loaded strictly by recon.models.weights (explicit path, then the Hugging Face
    cache; the track head dropped by `filter_track_head`); without them a WeightsNotFoundError names the file
    expected, where it looked and `recon weights pull NAME`.

    Args:
        weights: checkpoint path (`.safetensors`, `.pt`, `.pth`) or a folder holding it; None: the installed file.
        weights_name: registry entry of the full-size weights ("vggt-1b", "streamvggt"); with the tiny config the
            entry's `tiny_variant` ("vggt-tiny", "streamvggt-tiny") is loaded instead.
        model_config: "full" (published size) or "tiny" (the golden fixtures' size).
        causal: StreamVGGT (block-causal) instead of VGGT.
        random_init: random weights (`sane_random_init`), nothing is read. "tiny" without weights implies it.
        seed: seed of the random init.
        device, dtype: where the parameters live and their dtype.
    """
    from recon.models.registry import tiny_variant
    from recon.models.weights import load_pretrained

    if model_config not in MODEL_CONFIGS:
        raise ConfigError(f"model_config must be one of {MODEL_CONFIGS}, got {model_config!r}")
    if model_config == "tiny" and weights is None:
        random_init = True
    if not random_init:
        name = tiny_variant(weights_name) if model_config == "tiny" else weights_name
        model = load_pretrained(name, weights, device=device, dtype=dtype)
        if model.config.causal != causal:  # the registry entry fixes the mode; the backend decides
            model.config.causal = causal
        return model
    config = tiny_config(causal) if model_config == "tiny" else VGGTConfig(causal=causal)
    torch.manual_seed(seed)
    model = VGGT(config)
    logger.info("%s %s model with random weights (seed %d): outputs are not meaningful",
                model_config, "StreamVGGT" if causal else "VGGT", seed)
    sane_random_init(model, seed)
    return model.to(device=device, dtype=dtype).eval()


class VGGTWindowModel:
    """VGGT as a LASER window model (`recon.backends.laser`, backbone "vggt").

    `predict_window(images [n,3,H,W] in [0,1])` runs one offline VGGT pass and returns camera-frame points
    (depth unprojected with the predicted intrinsics: VGGT's depth+camera points are more accurate than its
    point head, facebookresearch/vggt@44b3afb:README.md:123-127), camera-to-world poses (the pose encoding
    converted at this boundary by recon.geometry.pose_encoding) and the depth confidence.
    """

    default_width = 518

    def __init__(self, model: VGGT, device: torch.device, autocast_dtype: torch.dtype | None = None) -> None:
        self.model = model.eval()
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.patch_size = model.config.patch_size

    def predict_window(self, images: torch.Tensor) -> Any:
        from recon.geometry.camera import backproject_depth
        from recon.geometry.pose_encoding import guard_fov, pose_encoding_to_T_world_cam
        from recon.types import WindowPrediction

        x = images.to(self.device, dtype=next(self.model.parameters()).dtype)[None]
        enabled = self.autocast_dtype is not None
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                                    enabled=enabled):
            out = self.model(x)
        H, W = x.shape[-2:]
        enc = out["pose_enc"][0].double().clone()
        enc[:, 7:9] = guard_fov(enc[:, 7:9])
        T_world_cam, K = pose_encoding_to_T_world_cam(enc, (H, W))
        depth = out["depth"][0, ..., 0].double()
        local = backproject_depth(depth, K)  # float64, one K per frame
        return WindowPrediction([], local.float().cpu(), T_world_cam.float().cpu(),
                                out["depth_conf"][0].float().cpu())


def build_window_model(*, weights: str | None = None, model_config: str = "full", device: str | None = None,
                       dtype: str | None = None, weights_dtype: str | None = None, random_init: bool = False,
                       seed: int = 0) -> VGGTWindowModel:
    """Window model for the LASER backend (`--backend laser --backbone vggt`).

    Args:
        weights: checkpoint path (else the installed `vggt-1b`; see `recon weights pull vggt-1b`).
        model_config: "full" or "tiny" (random weights unless `weights`: smoke runs).
        device: "cpu", "cuda", "auto"/None (CUDA when available).
        dtype: compute dtype, as for every backend (`recon.models.weights.compute_dtype`): "auto" (bf16 on CUDA,
            fp32 elsewhere), "fp32", "bf16", "fp16".
        weights_dtype: storage dtype of the parameters, "fp32" (default), "bf16" or "fp16".
        random_init, seed: random weights instead of a checkpoint.
    """
    from recon.models.weights import compute_dtype, pick_device, resolve_dtype

    dev = pick_device(device)
    stored = resolve_dtype(weights_dtype)
    autocast = compute_dtype(dtype, dev, stored)
    model = build_vggt(weights=weights, weights_name="vggt-1b", model_config=model_config, causal=False,
                       random_init=random_init, seed=seed, device=dev, dtype=stored)
    return VGGTWindowModel(model, dev, None if autocast == stored else autocast)
