"""LingBot-Map (Robbyant, arXiv 2604.14141): a causal VGGT-style streaming reconstructor, built from the shared layers.

Reference: Robbyant/lingbot-map@4cd9860 (Apache-2.0 code), described in ../shared/reference/lingbot_map.md. Our own
code; state-dict keys are the official ones (`../shared/golden/manifests/lingbot_map_keys.tsv`: VGGT-1B's keys minus
the track and point heads, plus `aggregator.scale_token`), so the published `.pt` files load strictly.

What is shared with VGGT (`recon.models.layers`, configured rather than copied): the DINOv2 patch embedding, the
alternating frame/global `Block`s with qk-norm, the frame blocks' 2D RoPE, the camera head (used causally through its
KV-cached `forward_step`), the DPT depth head and the optional point head. What LingBot adds:
- a **scale token** per frame after the registers (token order [camera, registers, scale], `patch_start_idx` 6):
  `scale_token[:, 0]` for the frames of the session's first (scale) call, `[:, 1]` for every later frame;
- **3D video RoPE** in the global blocks (`VideoRotaryEmbedding3D`, interleaved pairs, explicit `fhw_dim`), whose
  temporal index is the session's keyframe counter (`LingBotSession`), instead of the 2D RoPE;
- the output list holds only blocks `output_layers` (the reference hard-codes 4/11/17/23), and the heads index
  that 4-entry list;
- the heads run in float32 on float32-cast tokens with autocast off, as the reference does, whatever the
  aggregator's dtype (the golden fixtures run the aggregator in float64 and the heads in float32).

Output conventions (model-native; converted to `T_world_cam` at the backend boundary by recon.geometry.pose_encoding):
`pose_enc [B,S,9]` = world-to-camera translation, xyzw quaternion, fov_h, fov_w (world = the session's first camera,
normalised scale); `depth [B,S,H,W,1]` with `depth_conf [B,S,H,W]`; `world_points` only with the point head.

Full size without memory: `with torch.device("meta"): LingBot(LingBotConfig())`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
from recon.models.layers.camera_head import CameraHeadConfig
from recon.models.layers.dinov2 import DinoConfig
from recon.models.layers.dpt_head import DPTConfig
from recon.models.layers.rope_video import VideoRotaryEmbedding3D, video_positions
from recon.models.vggt import _pick, build_heads, sane_random_init

logger = logging.getLogger(__name__)

REFERENCE_OUTPUT_LAYERS = (4, 11, 17, 23)
MODEL_CONFIGS = ("full", "tiny")


def _head_dpt() -> DPTConfig:
    return DPTConfig(intermediate_layer_idx=(0, 1, 2, 3))


@dataclass
class VideoRoPEConfig:
    """3D video RoPE of the global blocks (defaults: the published model, head_dim 64)."""

    fhw_dim: tuple[int, int, int] = (20, 22, 22)
    theta: float = 10000.0
    max_frame_num: int = 1024  # temporal positions the model was built for; the session warns beyond


@dataclass
class LingBotConfig:
    """Every architecture knob of LingBot-Map; defaults are the published model (`GCTStream` as demo.py builds it).

    Attributes:
        output_layers: aggregator blocks whose outputs form the heads' token list (the reference's `selected_idx`).
        depth_head, point_head: DPT settings; their `intermediate_layer_idx` index `output_layers`.
        enable_point: build the point head (`enable_point=True` in the reference, 62 more keys).
    """

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    patch_embed: DinoConfig = field(default_factory=DinoConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    rope3d: VideoRoPEConfig = field(default_factory=VideoRoPEConfig)
    output_layers: tuple[int, ...] = REFERENCE_OUTPUT_LAYERS
    camera_head: CameraHeadConfig = field(default_factory=CameraHeadConfig)
    depth_head: DPTConfig = field(default_factory=_head_dpt)
    point_head: DPTConfig = field(default_factory=_head_dpt)
    enable_camera: bool = True
    enable_depth: bool = True
    enable_point: bool = False

    def __post_init__(self) -> None:
        agg = self.aggregator
        if self.embed_dim % agg.num_heads:
            raise ConfigError(f"LingBotConfig.embed_dim {self.embed_dim} is not divisible by aggregator.num_heads "
                              f"{agg.num_heads}")
        head_dim = self.embed_dim // agg.num_heads
        if sum(self.rope3d.fhw_dim) != head_dim or any(d % 2 for d in self.rope3d.fhw_dim):
            raise ConfigError(f"LingBotConfig.rope3d.fhw_dim {self.rope3d.fhw_dim} must be even sizes summing to the "
                              f"global attention head_dim {head_dim}")
        bad = [i for i in self.output_layers if not 0 <= i < agg.depth]
        if bad or not self.output_layers:
            raise ConfigError(f"LingBotConfig.output_layers {self.output_layers}: {bad} outside aggregator depth "
                              f"{agg.depth}")
        for name in ("depth_head", "point_head"):
            idx = getattr(self, name).intermediate_layer_idx
            if any(not 0 <= i < len(self.output_layers) for i in idx):
                raise ConfigError(f"LingBotConfig.{name}.intermediate_layer_idx {idx} must index output_layers "
                                  f"({len(self.output_layers)} entries)")

    @property
    def num_special_tokens(self) -> int:
        """Camera + registers + scale (6 published)."""
        return self.aggregator.num_register_tokens + 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


UNSUPPORTED_FIXTURE_OPTIONS = {
    # option: value the reference runs with; anything else is a mode recon does not implement.
    "disable_global_rope": False,
    "enable_3d_rope": True,
    "kv_cache_include_scale_frames": True,
}


def config_from_fixture(model_cfg: Mapping[str, Any]) -> LingBotConfig:
    """Translate a golden fixture's `config.json["model"]` (the reference's constructor knobs) into a LingBotConfig.

    Raises ConfigError for reference modes recon does not implement (global RoPE off, 3D RoPE off, anchors not
    kept, the camera head's own 3D RoPE), instead of silently running something else.
    """
    agg = dict(model_cfg.get("aggregator") or {})
    checks = {**{k: model_cfg.get(k, v) for k, v in UNSUPPORTED_FIXTURE_OPTIONS.items()},
              "disable_global_rope": agg.get("disable_global_rope", False)}
    for key, expected in UNSUPPORTED_FIXTURE_OPTIONS.items():
        if checks[key] != expected:
            raise ConfigError(f"lingbot fixture option {key}={checks[key]!r} is not supported (only {expected!r})")
    cam = model_cfg.get("camera_head")
    if cam and cam.get("enable_3d_rope"):
        raise ConfigError("lingbot fixture: the camera head's 3D RoPE is not supported (off in the published model)")
    rope = agg.get("rope3d") or {}
    fhw = rope.get("fhw_dim")
    return LingBotConfig(
        img_size=int(model_cfg.get("img_size", 518)),
        patch_size=int(model_cfg.get("patch_size", 14)),
        embed_dim=int(model_cfg.get("embed_dim", 1024)),
        patch_embed=_pick(DinoConfig, model_cfg.get("patch_embed")),
        aggregator=_pick(AggregatorConfig, agg),
        rope3d=VideoRoPEConfig(fhw_dim=tuple(fhw) if fhw else (20, 22, 22), theta=float(rope.get("theta", 1e4)),
                               max_frame_num=int(rope.get("max_seq_len", model_cfg.get("max_frame_num", 1024)))),
        output_layers=tuple(agg.get("selected_idx", REFERENCE_OUTPUT_LAYERS)),
        camera_head=_pick(CameraHeadConfig, cam),
        depth_head=_pick(DPTConfig, model_cfg.get("depth_head")) if model_cfg.get("depth_head") else _head_dpt(),
        point_head=_pick(DPTConfig, model_cfg.get("point_head")) if model_cfg.get("point_head") else _head_dpt(),
        enable_camera=cam is not None,
        enable_depth=model_cfg.get("depth_head") is not None,
        enable_point=model_cfg.get("point_head") is not None,
    )


def tiny_config(enable_point: bool = False) -> LingBotConfig:
    """The golden fixtures' tiny architecture (embed 32, 24 rounds, 2 heads, fhw (4, 6, 6)): tests and demos."""
    tiny_dpt = DPTConfig(features=16, out_channels=(16, 24, 32, 48), intermediate_layer_idx=(0, 1, 2, 3))
    return LingBotConfig(
        embed_dim=32,
        patch_embed=DinoConfig(depth=2, num_heads=2),
        aggregator=AggregatorConfig(depth=24, num_heads=2),
        rope3d=VideoRoPEConfig(fhw_dim=(4, 6, 6)),
        camera_head=CameraHeadConfig(trunk_depth=2, num_heads=4, mlp_ratio=2.0),
        depth_head=tiny_dpt, point_head=tiny_dpt, enable_point=enable_point,
    )


class LingBotAggregator(Aggregator):
    """The VGGT aggregator with LingBot's scale token and 3D video RoPE in the global blocks (see module docstring).

    `scale_token [1, 2, 1, C]` is inserted after the registers, so `patch_start_idx` is `2 + registers`.
    """

    def __init__(self, *, rope3d: VideoRoPEConfig, **kwargs: Any) -> None:
        video_rope = VideoRotaryEmbedding3D(rope3d.fhw_dim, rope3d.theta)
        super().__init__(global_rope=video_rope, **kwargs)
        self.video_rope = video_rope
        self.scale_token = nn.Parameter(torch.zeros(1, 2, 1, self.embed_dim))
        self.num_registers = self.register_token.shape[2]
        self.patch_start_idx = 2 + self.num_registers  # also the special-token count used for the 2D positions

    def forward_frames(self, images: torch.Tensor, memory: Any, *, first_frame: bool, scale_frames: bool,
                       t_start: int, keep_layers: set[int] | None = None) -> list[torch.Tensor | None]:
        """Run `images [B, S, 3, H, W]` (one call of a session) against `memory` (one cache per global block).

        Args:
            first_frame: the call starts the session (its first frame takes the index-0 camera/register tokens).
            scale_frames: the call is the session's scale phase (all its frames take `scale_token[:, 0]`).
            t_start: 3D-RoPE temporal index of the call's first frame (frames get t_start, t_start+1, ...).
            keep_layers: entries to keep (others None).
        """
        tokens, pos, max_pos = self._tokens(images, first_frame_is_zero=first_frame)
        B, S, _, C = tokens.shape
        scale = self.scale_token[:, 0 if scale_frames else 1].unsqueeze(1).expand(B, S, 1, C)
        r1 = 1 + self.num_registers
        tokens = torch.cat([tokens[:, :, :r1], scale, tokens[:, :, r1:]], dim=2)
        gh, gw = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        pos3d = video_positions(t_start, S, gh, gw, self.patch_start_idx, images.device)
        return self._run(tokens, pos, max_pos, None, memory, keep_layers, global_pos=pos3d)


class LingBot(nn.Module):
    """LingBot-Map: `LingBotAggregator` + camera head + DPT depth (+ optional point) head.

    Streaming goes through `recon.models.lingbot_session.LingBotSession` (`new_session`); this module holds the
    weights and runs one call (`forward_frames`).

    Args:
        config: the architecture (defaults: full size).
        device, dtype: where and in which dtype to create the parameters (e.g. `device="meta"`).
    """

    def __init__(self, config: LingBotConfig | None = None, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = cfg = config or LingBotConfig()
        with torch.device(device) if device is not None else nullcontext():
            # AggregatorConfig's fields are the Aggregator's keyword arguments.
            self.aggregator = LingBotAggregator(rope3d=cfg.rope3d, img_size=cfg.img_size, patch_size=cfg.patch_size,
                                                embed_dim=cfg.embed_dim, patch_embed=asdict(cfg.patch_embed),
                                                **asdict(cfg.aggregator))
            self.camera_head, self.depth_head, self.point_head = build_heads(cfg)
        if dtype is not None:
            self.to(dtype)
        self._attention_key: tuple | None = None
        self._keep = set(cfg.output_layers)

    @property
    def patch_start_idx(self) -> int:
        return self.aggregator.patch_start_idx

    def heads(self) -> list[nn.Module]:
        return [h for h in (self.camera_head, self.depth_head, self.point_head) if h is not None]

    def select_attention(self, device: torch.device, dtype: torch.dtype, prefer: str | None = None) -> None:
        """Choose the attention kernels once (recon.kernels dispatch): the aggregator's for `dtype`, the camera
        head's for its own parameter dtype (it runs with autocast off)."""
        head_dtype = next(self.camera_head.parameters()).dtype if self.camera_head is not None else dtype
        key = (torch.device(device).type, dtype, head_dtype, prefer)
        if key == self._attention_key:
            return
        for module, dt in ((self.aggregator, dtype), (self.camera_head, head_dtype)):
            if module is not None:
                impl = select_attention(device, dt, need_mask=False, prefer=prefer)
                set_attention_impl(module, impl, impl)
        self._attention_key = key

    def forward_frames(self, images: torch.Tensor, memory: Any, camera_caches: Sequence[Sequence[Any]] | None, *,
                       first_frame: bool, scale_frames: bool, t_start: int) -> dict[str, Any]:
        """One session call: `images [B, S, 3, H, W]` through the aggregator (against `memory`) and the heads.

        `camera_caches[iteration][layer]` are the camera trunk's caches (anything with `update(k, v)`); the caller
        decides what they store. Returns `aggregated_tokens` (the `output_layers` entries, `[B,S,P,2C]`),
        `pose_enc [B,S,9]`, `pose_enc_list` (per iteration), `depth`, `depth_conf`, and world points with the point
        head.
        """
        device_type = images.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else images.dtype
        self.select_attention(images.device, dtype)
        full = self.aggregator.forward_frames(images, memory, first_frame=first_frame, scale_frames=scale_frames,
                                              t_start=t_start, keep_layers=self._keep)
        tokens = [full[i] for i in self.config.output_layers]
        out: dict[str, Any] = {"aggregated_tokens": tokens}
        out.update(self.run_heads(tokens, tuple(images.shape[-2:]), camera_caches))
        return out

    def run_heads(self, tokens: list[torch.Tensor], image_hw: tuple[int, int],
                  camera_caches: Sequence[Sequence[Any]] | None) -> dict[str, Any]:
        """Heads with autocast off on tokens cast to the heads' parameter dtype (the reference's `.float()`)."""
        out: dict[str, Any] = {}
        psi = self.patch_start_idx
        with torch.autocast(device_type=tokens[0].device.type, enabled=False):
            if self.camera_head is not None:
                dt = next(self.camera_head.parameters()).dtype
                cam_tokens = [t.to(dt) for t in tokens]
                poses = (self.camera_head.forward_step(cam_tokens, camera_caches) if camera_caches is not None
                         else self.camera_head(cam_tokens, causal=True))
                out["pose_enc_list"] = poses
                out["pose_enc"] = poses[-1]
            for name, head in (("depth", self.depth_head), ("world_points", self.point_head)):
                if head is not None:
                    dt = next(head.parameters()).dtype
                    out[name], out[name + "_conf"] = head([t.to(dt) for t in tokens], image_hw, psi)
        return out

    def new_session(self, config: Any = None, **overrides: Any) -> Any:
        """A streaming session (`recon.models.lingbot_session.LingBotSession`) with `config` (a
        `LingBotStreamConfig`) or keyword overrides of its defaults."""
        from recon.models.lingbot_session import LingBotSession, LingBotStreamConfig

        cfg = config or LingBotStreamConfig(**overrides)
        return LingBotSession(self, cfg)


# --------------------------------------------------------------------------------------------------------------
# Ready-to-run models (backends, benchmarks): weights resolution and strict loading, or random init.
# --------------------------------------------------------------------------------------------------------------


def build_lingbot(*, weights: str | Path | None = None, weights_name: str = "lingbot-map-long",
                  model_config: str = "full", random_init: bool = False, seed: int = 0,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> LingBot:
    """A LingBot ready for inference.

    Weights are resolved and loaded strictly by recon.models.weights (explicit path, then the Hugging Face cache);
    without them a WeightsNotFoundError names the file, where it looked and `recon weights pull NAME`.

    Args:
        weights: checkpoint path or a folder holding it; None: the installed file of `weights_name`.
        weights_name: "lingbot-map-long" (recommended for long sequences), "lingbot-map"; "-tiny" is appended for
            the tiny configuration.
        model_config: "full" (published size) or "tiny" (the golden fixtures' size; random weights unless given).
        random_init: random weights (`sane_random_init`), nothing is read.
        seed, device, dtype: random-init seed, where the parameters live and their dtype.
    """
    from recon.models.weights import load_pretrained

    if model_config not in MODEL_CONFIGS:
        raise ConfigError(f"model_config must be one of {MODEL_CONFIGS}, got {model_config!r}")
    if model_config == "tiny" and weights is None:
        random_init = True
    if not random_init:
        name = "lingbot-map-tiny" if model_config == "tiny" else weights_name
        return load_pretrained(name, weights, device=device, dtype=dtype)
    from recon.models.seeding import seeded

    with seeded(seed):
        model = LingBot(tiny_config() if model_config == "tiny" else LingBotConfig())
    logger.info("%s LingBot-Map model with random weights (seed %d): outputs are not meaningful", model_config, seed)
    sane_random_init(model, seed)
    return model.to(device=device, dtype=dtype).eval()
