"""HorizonStream: constant-memory streaming reconstruction with windowed gated attention, spatiotemporal RoPE,
Kimi-Delta linear attention carried across chunks, window-slot pose tokens and a metric readout token.

Reference: TooCoolLa/HorizonStream@ddf1333 (mirror of 3DAgentWorld/HorizonStream), notes in
../shared/reference/horizonstream.md §2-3; the exact rules we copy are numbered 1-14 in
../shared/golden/horizonstream_tiny/README.md and cited below as "rule N". Our own code, built from the shared
layers of recon.models.layers (DINOv2 encoder, `Block` with qk-norm, 3D RoPE and the head-wise gate, the KDA layer,
the VGGT camera and DPT heads); only what is HorizonStream's own lives here: the token layout with pose slots, the
frame-block pose pass against its reference frame's patch K/V, the windowed global attention over carried K/V,
the KDA blocks and the metric readout. State-dict keys are the official ones (`HorizonStream.pt` loads strictly
after `filter_horizonstream_checkpoint`).

One call is one chunk (`forward_chunk`): the first chunk has exactly `window_size` frames, later chunks any number
(rule 1). What a chunk hands to the next is a `HorizonStreamState` of constant size: per layer the post-RoPE patch
K/V of the last Win-1 frames (frame and global blocks) and the KDA recurrent + short-conv states.

Outputs are model-native: `chunk_cam_map [F, Win, 9]` holds, for every frame and window slot, the pose of the frame
relative to the slot's reference frame (absT_quaR_FoV, world-to-camera, translation already multiplied by the
chunk's metric scale); turning them into absolute poses is online motion averaging (recon.geometry.motion_averaging,
run per chunk by `recon.models.horizonstream_session`).

Building a full-size model without memory: `HorizonStream(device="meta")`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from recon.errors import ConfigError
from recon.kernels.attention import select_attention
from recon.models.layers.attention import set_attention_impl
from recon.models.layers.block import Block
from recon.models.layers.camera_head import CameraHead, CameraHeadConfig
from recon.models.layers.dinov2 import IMAGENET_MEAN, IMAGENET_STD, DinoConfig, DinoVisionTransformer
from recon.models.layers.dpt_head import DPTConfig, DPTHead
from recon.models.layers.kda_attention import KDAState, KimiDeltaAttention
from recon.models.layers.layer_scale import LayerScale
from recon.models.layers.mlp import Mlp
from recon.models.layers.rope3d import RotaryPositionEmbedding3D, spatiotemporal_positions

logger = logging.getLogger(__name__)



@dataclass
class HorizonStreamConfig:
    """Every knob of HorizonStream (defaults: `configs/horizonstream_infer.yaml`, 1,210,901,301 parameters).

    Attributes:
        img_size, patch_size, embed_dim: DINO training size (pos-embed grid), patch, token width C.
        depth, num_heads, mlp_ratio: alternating frame/global blocks (24 each, 16 heads).
        qk_norm, qk_norm_eps, norm_eps, init_values, rope_freq: block settings (as VGGT's aggregator).
        gate_attn: "headwise" sigmoid gate per head in frame and global blocks (rule 10), or None.
        rope_temporal_period: wrapping period of the temporal RoPE coordinate (rule 6; 21 at full size). 0 turns
            the offset off: every chunk starts at t = 1, as the reference does for a period of 0.
        num_pose_tokens: X, pose tokens per window slot.
        window_size: Win, frames per window (first chunk size; the cache holds Win-1 frames).
        gla_layers: global layers preceded by a KDA block (rule 8).
        gla_expand_v, gla_conv_size, gla_norm_eps: KDA layer settings.
        num_register_tokens: size of the aggregator `register_token` parameter.
        use_register_token: prepend its second entry's tokens to every frame (off at inference); they come before
            the metric token, both at position (0, 0, 0).
        metric_readout: the metric readout token and head exist (on at inference). Off: no scale, depth and
            translations stay in the model's own units and `predicted_metric_scale` is not output.
        aggregator_layer_idx: the aggregator's `intermediate_layer_idx` (None: the DPT's). The reference requires
            the last layer among them; the window pose tokens come from the layer of its last entry (rule 11),
            which need not be the last layer, and the DPT reads only layers listed here.
        patch_embed, camera_head, depth_head: sub-configs (depth_head.intermediate_layer_idx are the DPT taps, in
            order; a layer may feed several taps).
        metric_hidden: hidden widths of the metric readout MLP (2C -> 256 -> 128 -> 1).

    Depth is `exp(x) * scale` with no clamp on x: the reference head's "exp" activation
    (`utils/vendor/models/components/heads/head_act.py`) has none. The `exps_max_clamp: 6.9` that the fixture
    configs list among the DPT defaults is not an argument of that head and is never applied; horizonstream_tiny_v2
    reaches x = 8.9 in later chunks and stores exp(8.9).
    """

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    qk_norm: bool = True
    qk_norm_eps: float = 1e-5
    norm_eps: float = 1e-5
    init_values: float = 0.01
    rope_freq: float = 100.0
    gate_attn: str | None = "headwise"
    rope_temporal_period: int = 21
    num_pose_tokens: int = 32
    window_size: int = 10
    gla_layers: tuple[int, ...] = (4, 11, 17, 23)
    gla_expand_v: float = 1.0
    gla_conv_size: int = 4
    gla_norm_eps: float = 1e-5
    num_register_tokens: int = 4
    use_register_token: bool = False
    metric_readout: bool = True
    aggregator_layer_idx: tuple[int, ...] | None = None
    patch_embed: DinoConfig = field(default_factory=DinoConfig)
    camera_head: CameraHeadConfig = field(default_factory=CameraHeadConfig)
    depth_head: DPTConfig = field(default_factory=lambda: DPTConfig(frames_chunk_size=1))
    metric_hidden: tuple[int, ...] = (256, 128)

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"HorizonStreamConfig.embed_dim {self.embed_dim} is not divisible by num_heads "
                              f"{self.num_heads}")
        if self.window_size < 2:
            raise ConfigError(f"HorizonStreamConfig.window_size must be >= 2, got {self.window_size}")
        if self.rope_temporal_period < 0:
            raise ConfigError(f"HorizonStreamConfig.rope_temporal_period must be >= 0, got {self.rope_temporal_period}")
        taps = self.output_layers
        bad = [i for i in (*self.gla_layers, *self.depth_head.intermediate_layer_idx, *taps)
               if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"HorizonStreamConfig: layer indices {bad} outside depth {self.depth}")
        if len(self.depth_head.intermediate_layer_idx) != 4:
            raise ConfigError("HorizonStreamConfig: the DPT head reads exactly four taps, got "
                              f"{list(self.depth_head.intermediate_layer_idx)}")
        if self.depth - 1 not in taps:
            raise ConfigError(f"HorizonStreamConfig: the aggregator layers {list(taps)} must include the last layer "
                              f"{self.depth - 1} (the metric readout reads it)")
        missing = sorted(set(self.depth_head.intermediate_layer_idx) - set(taps))
        if missing:
            raise ConfigError(f"HorizonStreamConfig: DPT taps {missing} are not aggregator layers {list(taps)}")
        if self.gate_attn not in (None, "headwise"):
            raise ConfigError(f"HorizonStreamConfig.gate_attn must be None or 'headwise', got {self.gate_attn!r}")

    @property
    def output_layers(self) -> tuple[int, ...]:
        """The aggregator layers whose outputs are kept (`aggregator_layer_idx`, default the DPT taps)."""
        if self.aggregator_layer_idx is not None:
            return tuple(self.aggregator_layer_idx)
        return tuple(self.depth_head.intermediate_layer_idx)

    @classmethod
    def from_fixture(cls, cfg: Mapping[str, Any]) -> HorizonStreamConfig:
        """Config from a horizonstream fixture's config.json (`model_cfg` as given to the reference's
        `HorizonStream(**cfg)`, plus the defaults it records); reference options we do not implement are refused."""
        model = cfg["model_cfg"]
        agg, cam, dpt = model["agg_regator_cfg"], model["cam_decoder_cfg"], model["dpt_decoder_cfg"]
        agg_def = cfg.get("aggregator_defaults_not_in_cfg", {})
        cam_def = cfg.get("cam_head_defaults_not_in_cfg", {})
        dpt_def = cfg.get("dpt_defaults_not_in_cfg", {})
        pe = cfg["patch_embed_override"]
        _refuse_unsupported(model, agg, agg_def, pe)
        depth = agg["depth"]
        agg_taps = agg.get("intermediate_layer_idx", agg_def.get("intermediate_layer_idx", [4, 11, 17, 23]))
        dpt_taps = dpt.get("intermediate_layer_idx", agg_taps)  # the reference copies the aggregator's when absent
        arch = str(agg.get("global_attn_arch", "swa")).lower()
        gla = agg.get("gla_serial_layers") if arch in ("gla", "gla_hybrid", "gla+attn", "gla_swa") else []
        if gla is None:  # the reference's default: a KDA block before every aggregator output layer
            gla = agg_taps
        return cls(
            img_size=agg["img_size"], patch_size=agg["patch_size"], embed_dim=agg["embed_dim"], depth=depth,
            num_heads=agg["num_heads"], mlp_ratio=agg_def.get("mlp_ratio", 4.0),
            qk_norm=agg_def.get("qk_norm", True), qk_norm_eps=agg_def.get("qk_layernorm_eps", 1e-5),
            norm_eps=agg_def.get("block_layernorm_eps", 1e-5), init_values=agg_def.get("init_values", 0.01),
            rope_freq=agg_def.get("rope_freq", 100.0), gate_attn=agg.get("gate_attn"),
            rope_temporal_period=agg["rope_temporal_period"], num_pose_tokens=agg["num_pose_tokens"],
            window_size=cfg.get("inference", {}).get("window_size", 10),
            gla_layers=tuple(sorted({i + depth if i < 0 else i for i in gla})),
            gla_expand_v=agg.get("gla_expand_v", 1.0), gla_conv_size=agg.get("gla_conv_size", 4),
            gla_norm_eps=agg.get("gla_norm_eps", 1e-5),
            num_register_tokens=agg_def.get("num_register_tokens", 4),
            use_register_token=bool(agg.get("use_register_token", True)),
            metric_readout=bool(model.get("enable_metric_readout_token", False)),
            aggregator_layer_idx=tuple(agg_taps),
            patch_embed=DinoConfig(depth=pe["depth"], num_heads=pe["num_heads"], mlp_ratio=pe["mlp_ratio"],
                                   num_register_tokens=pe["num_register_tokens"], init_values=pe["init_values"],
                                   norm_eps=pe["layernorm_eps"], interpolate_antialias=pe["interpolate_antialias"],
                                   interpolate_offset=pe["interpolate_offset"]),
            camera_head=CameraHeadConfig(trunk_depth=cam["trunk_depth"], num_heads=cam["num_heads"],
                                         mlp_ratio=cam_def.get("mlp_ratio", 4.0),
                                         init_values=cam_def.get("init_values", 0.01),
                                         num_iterations=cam_def.get("num_iterations", 4)),
            depth_head=DPTConfig(features=dpt.get("features", 256),
                                 out_channels=tuple(dpt.get("out_channels", (256, 512, 1024, 1024))),
                                 intermediate_layer_idx=tuple(dpt_taps),
                                 pos_embed=dpt.get("pos_embed", dpt_def.get("pos_embed", True)),
                                 down_ratio=dpt.get("down_ratio", dpt_def.get("down_ratio", 1)),
                                 frames_chunk_size=model.get("frames_chunk_size", 1)),
            metric_hidden=tuple(model.get("metric_readout_head_cfg", {}).get("hidden_dims", (256, 128))),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _refuse_unsupported(model: Mapping[str, Any], agg: Mapping[str, Any], agg_def: Mapping[str, Any],
                        pe: Mapping[str, Any]) -> None:
    """ConfigError for reference options whose code paths we do not implement (none is used at inference)."""
    checks = [
        (pe["embed_dim"] == agg["embed_dim"], "the DINO width must equal the aggregator's embed_dim"),
        (not agg.get("fuse_grm_priori", True), "group-map fusion (fuse_grm_priori) needs group maps at inference"),
        (str(agg.get("global_attn_impl", "softmax")).lower() in ("softmax", "sdpa", "swa"),
         f"global_attn_impl {agg.get('global_attn_impl')!r} (linear global attention)"),
        (str(agg.get("rope_type", "2d")) == "3d", f"rope_type {agg.get('rope_type', '2d')!r} (only the 3D RoPE)"),
        (float(agg_def.get("rope_freq", 100)) > 0, "rope_freq <= 0 (no RoPE)"),
        (list(agg_def.get("aa_order", ["frame", "global"])) == ["frame", "global"], "aa_order other than frame,global"),
        (int(agg_def.get("aa_block_size", 1)) == 1, "aa_block_size other than 1"),
        (not model.get("use_xyz_head", False), "the xyz (point) head"),
        (not agg.get("use_cam_emb", False), "camera embeddings (use_cam_emb)"),
    ]
    failed = [why for ok, why in checks if not ok]
    if failed:
        raise ConfigError("HorizonStream: unsupported reference option(s): " + "; ".join(failed))


def tiny_config() -> HorizonStreamConfig:
    """The golden fixture's tiny configuration (embed 32, 4 layers, Win 4, X 12, period 5): tests and smoke runs."""
    return HorizonStreamConfig(
        embed_dim=32, depth=4, num_heads=2, rope_temporal_period=5, num_pose_tokens=12, window_size=4,
        gla_layers=(1, 3), patch_embed=DinoConfig(depth=2, num_heads=2),
        camera_head=CameraHeadConfig(trunk_depth=2, num_heads=2),
        depth_head=DPTConfig(features=16, out_channels=(8, 16, 32, 32), intermediate_layer_idx=(0, 1, 2, 3),
                             frames_chunk_size=1),
        metric_hidden=(16, 8))


@dataclass
class HorizonStreamState:
    """What one chunk hands to the next (rule 1): constant size whatever the stream length.

    Attributes:
        chunk_idx: index of the next chunk (0: nothing carried yet).
        frame_kv: per frame block, the post-RoPE patch K/V of the last Win-1 frames, `[2, 1, Win-1, H, P, D]`.
        global_kv: per global block, the same for the global attention, `[2, 1, H, Win-1, P, D]`.
        kda: per KDA layer index, the recurrent and short-conv states (recon.models.layers.kda_attention).
    """

    chunk_idx: int = 0
    frame_kv: list[torch.Tensor | None] = field(default_factory=list)
    global_kv: list[torch.Tensor | None] = field(default_factory=list)
    kda: dict[int, KDAState] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes held by the carried tensors."""
        tensors = [t for t in (*self.frame_kv, *self.global_kv) if t is not None]
        for s in self.kda.values():
            tensors += [s.recurrent, s.conv_q, s.conv_k, s.conv_v]
        return sum(t.numel() * t.element_size() for t in tensors)


class KDAAttention(nn.Module):
    """Holds the KDA layer under the checkpoint's name (`attn.gla.*`); positions, masks and gates do not apply."""

    def __init__(self, dim: int, num_heads: int, expand_v: float, conv_size: int, norm_eps: float) -> None:
        super().__init__()
        self.gla = KimiDeltaAttention(dim, num_heads, dim // num_heads, expand_v=expand_v, conv_size=conv_size,
                                      norm_eps=norm_eps)

    def forward(self, x: torch.Tensor, state: KDAState | None) -> tuple[torch.Tensor, KDAState]:
        return self.gla(x, state)


class KDABlock(nn.Module):
    """`x + ls1(KDA(norm1(x)))`, then `+ ls2(mlp(norm2(.)))` over a whole chunk (rule 8); state carried."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, ffn_bias: bool, init_values: float | None,
                 norm_eps: float, expand_v: float, conv_size: int, kda_norm_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = KDAAttention(dim, num_heads, expand_v, conv_size, kda_norm_eps)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, state: KDAState | None) -> tuple[torch.Tensor, KDAState]:
        y, new_state = self.attn(self.norm1(x), state)
        x = x + self.ls1(y)
        return x + self.ls2(self.mlp(self.norm2(x))), new_state


def _block_tail(blk: Block, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """The rest of a pre-norm block once its attention output is known."""
    x = x + blk.ls1(attn_out)
    return x + blk.ls2(blk.mlp(blk.norm2(x)))


def global_attention_mask(num_frames: int, P: int, X: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean `[F*A, F*A]` mask of the first chunk's global attention (rule 9; True = may attend).

    Token at offset o of frame b is an active query iff o < P + (b+1)·X (its own and earlier slots); an active query
    sees the P patch tokens of every earlier frame and the offsets < P + (b+1)·X of its own frame; every token sees
    itself, so inactive pose slots attend only to themselves.
    """
    A = P + num_frames * X
    r = torch.arange(num_frames * A, device=device)
    block, off = r // A, r % A
    limit = P + (block + 1) * X
    row_ok = (off < limit)[:, None]
    earlier_patch = (block[None, :] < block[:, None]) & (off[None, :] < P)
    own = (block[None, :] == block[:, None]) & (off[None, :] < limit[:, None])
    return (row_ok & (earlier_patch | own)) | torch.eye(len(r), dtype=torch.bool, device=device)


def camera_trunk_mask(num_frames: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """First-chunk camera-trunk mask `[F, 1, Win, Win]` (rule 12): row i allows (q, k) iff (q <= i and k <= i)
    or k == 0."""
    i = torch.arange(num_frames, device=device)[:, None, None]
    q = torch.arange(window, device=device)[None, :, None]
    k = torch.arange(window, device=device)[None, None, :]
    return (((q <= i) & (k <= i)) | (k == 0))[:, None]


class HorizonStreamAggregator(nn.Module):
    """The backbone (`agg_regator.*` keys): DINO patch tokens, then alternating frame / global blocks per chunk."""

    def __init__(self, cfg: HorizonStreamConfig) -> None:
        super().__init__()
        C, pe = cfg.embed_dim, cfg.patch_embed
        self.cfg = cfg
        self.patch_embed = DinoVisionTransformer(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=C, depth=pe.depth, num_heads=pe.num_heads,
            mlp_ratio=pe.mlp_ratio, num_register_tokens=pe.num_register_tokens, qkv_bias=pe.qkv_bias,
            proj_bias=pe.proj_bias, ffn_bias=pe.ffn_bias, init_values=pe.init_values, norm_eps=pe.norm_eps,
            interpolate_antialias=pe.interpolate_antialias, interpolate_offset=pe.interpolate_offset)
        self.rope = RotaryPositionEmbedding3D(cfg.rope_freq)

        def block() -> Block:
            return Block(C, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, proj_bias=cfg.proj_bias,
                         ffn_bias=cfg.ffn_bias, init_values=cfg.init_values, norm_eps=cfg.norm_eps,
                         qk_norm=cfg.qk_norm, qk_norm_eps=cfg.qk_norm_eps, rope=self.rope, gate_attn=cfg.gate_attn)

        self.frame_blocks = nn.ModuleList([block() for _ in range(cfg.depth)])
        self.global_blocks = nn.ModuleList([block() for _ in range(cfg.depth)])
        self.global_gla_blocks = nn.ModuleDict({
            str(i): KDABlock(C, cfg.num_heads, cfg.mlp_ratio, cfg.ffn_bias, cfg.init_values, cfg.norm_eps,
                             cfg.gla_expand_v, cfg.gla_conv_size, cfg.gla_norm_eps)
            for i in sorted(set(cfg.gla_layers))})
        # camera_token is in the checkpoint but never read; register_token only with use_register_token (rule 4).
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, C))
        self.register_token = nn.Parameter(torch.zeros(1, 2, cfg.num_register_tokens, C))
        self.pose_token = nn.Parameter(torch.zeros(2, cfg.num_pose_tokens, C))
        nn.init.normal_(self.pose_token, std=1e-6)
        if cfg.metric_readout:
            self.metric_readout_token = nn.Parameter(torch.zeros(1, 1, C))
            nn.init.normal_(self.metric_readout_token, std=1e-6)
        self.register_buffer("_resnet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def num_special_tokens(self) -> int:
        """Tokens before the patch tokens of a frame: the register tokens (if used), then the metric token."""
        cfg = self.cfg
        return (cfg.num_register_tokens if cfg.use_register_token else 0) + int(cfg.metric_readout)

    def _special_tokens(self, F: int, dtype: torch.dtype) -> list[torch.Tensor]:
        """Per-frame leading tokens `[F, n, C]` in order (rule 4): register tokens (entry 1 of the parameter),
        then the metric readout token."""
        C = self.cfg.embed_dim
        out = []
        if self.cfg.use_register_token:
            out.append(self.register_token[0, 1:].expand(F, -1, C))
        if self.cfg.metric_readout:
            out.append(self.metric_readout_token.expand(F, 1, C))
        return [t.to(dtype) for t in out]

    def _pose_tokens(self, F: int, win: int, first: bool) -> torch.Tensor:
        """`[F*Win, X, C]` slot queries (rule 5): the reference token on the diagonal of chunk 0, else last slot."""
        idx = torch.arange(F, device=self.pose_token.device)[:, None]
        slot = torch.arange(win, device=self.pose_token.device)[None, :]
        use_ref = (idx == slot) if first else (slot == win - 1).expand(F, win)
        tok = torch.where(use_ref[..., None, None], self.pose_token[0], self.pose_token[1])
        return tok.reshape(F * win, *self.pose_token.shape[1:])

    def _frame_block(self, layer: int, patch: torch.Tensor, pose: torch.Tensor, patch_pos: torch.Tensor,
                     carried: torch.Tensor | None, win: int, max_pos: int, B: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rule 7: patch pass per frame, then each (frame, slot) pose pass against its reference frame's patch K/V
        followed by its own K/V. `B` streams of F frames each (`patch [B*F, P, C]`). Returns (patch, pose,
        carried K/V `[2, B, Win-1, H, P, D]`)."""
        blk = self.frame_blocks[layer]
        F = patch.shape[0] // B
        xn = blk.norm1(patch)
        q, k, v = blk.attn.project_qkv(xn, patch_pos, max_pos)  # [B*F, H, P, D]
        patch = _block_tail(blk, patch, blk.attn.attend(q, k, v, xn))
        k, v = k.reshape(B, F, *k.shape[1:]), v.reshape(B, F, *v.shape[1:])
        if carried is None:  # chunk 0: frame i, slot j -> frame j
            hist_k, hist_v = k, v
            ref = torch.arange(win, device=k.device)[None, :].expand(F, win)
        else:  # L = carried Win-1 frames + this chunk; frame i, slot j -> L[i + j]
            hist_k, hist_v = torch.cat([carried[0], k], dim=1), torch.cat([carried[1], v], dim=1)
            ref = torch.arange(F, device=k.device)[:, None] + torch.arange(win, device=k.device)[None, :]
        ref = ref.reshape(-1)
        pn = blk.norm1(pose)
        pq, pk, pv = blk.attn.project_qkv(pn)  # pose tokens sit at position 0: no rotation
        keys = torch.cat([hist_k[:, ref].flatten(0, 1), pk], dim=2)
        values = torch.cat([hist_v[:, ref].flatten(0, 1), pv], dim=2)
        pose = _block_tail(blk, pose, blk.attn.attend(pq, keys, values, pn))
        new_carried = torch.stack([hist_k[:, -(win - 1):], hist_v[:, -(win - 1):]])
        return patch, pose, new_carried

    def _global_block(self, layer: int, tokens: torch.Tensor, all_pos: torch.Tensor, P: int,
                      carried: torch.Tensor | None, win: int, max_pos: int, B: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rule 9 on `tokens [B*F, A, C]` (B streams of F frames): chunk 0 one masked sequence per stream, later
        chunks per frame against the window's patch K/V then its own pose K/V. Returns (tokens, carried K/V
        `[2, B, H, Win-1, P, D]`)."""
        blk = self.global_blocks[layer]
        BF, A, C = tokens.shape
        F = BF // B
        if carried is None:
            X = (A - P) // win
            x = tokens.reshape(B, F * A, C)
            xn = blk.norm1(x)
            q, k, v = blk.attn.project_qkv(xn, all_pos.reshape(B, F * A, 3), max_pos)  # [B, H, F*A, D]
            mask = global_attention_mask(F, P, X, device=tokens.device)
            x = _block_tail(blk, x, blk.attn.attend(q, k, v, xn, attn_mask=mask))
            H, D = k.shape[1], k.shape[-1]
            kv = torch.stack([k, v]).reshape(2, B, H, F, A, D)[:, :, :, F - (win - 1):, :P]
            return x.reshape(BF, A, C), kv
        xn = blk.norm1(tokens)
        q, k, v = blk.attn.project_qkv(xn, all_pos, max_pos)  # [B*F, H, A, D]
        H, D = k.shape[1], k.shape[-1]
        new = torch.stack([k[:, :, :P], v[:, :, :P]]).reshape(2, B, F, H, P, D).transpose(2, 3)  # [2,B,H,F,P,D]
        hist = torch.cat([carried, new], dim=3)  # [2, B, H, Win-1+F, P, D]
        idx = torch.arange(F, device=k.device)[:, None] + torch.arange(win, device=k.device)[None, :]
        window = hist[:, :, :, idx.reshape(-1)].reshape(2, B, H, F, win * P, D).transpose(2, 3)
        window = window.reshape(2, BF, H, win * P, D)
        keys = torch.cat([window[0], k[:, :, P:]], dim=2)
        values = torch.cat([window[1], v[:, :, P:]], dim=2)
        out = _block_tail(blk, tokens, blk.attn.attend(q, keys, values, xn))
        return out, hist[:, :, :, -(win - 1):]

    def forward(self, images: torch.Tensor, state: HorizonStreamState, window_size: int,
                intermediates: dict[str, torch.Tensor] | None = None
                ) -> tuple[list[torch.Tensor | None], torch.Tensor, HorizonStreamState]:
        """One chunk `images [F, 3, H, W]` in [0, 1].

        Returns:
            (layer outputs: per layer `[1, F, P, 2C]` frame‖global patch tokens, None for layers no head reads;
             `win_pose_tokens [1, F, Win, 2C]`; the state for the next chunk).
        """
        outputs, pose_out, new = self.forward_batch(images[None], [state], window_size, intermediates)
        return outputs, pose_out, new[0]

    def forward_batch(self, images: torch.Tensor, states: list[HorizonStreamState], window_size: int,
                      intermediates: dict[str, torch.Tensor] | None = None
                      ) -> tuple[list[torch.Tensor | None], torch.Tensor, list[HorizonStreamState]]:
        """One chunk of each of B streams, `images [B, F, 3, H, W]` (same F), `states[b]` stream b's carried state.

        The streams must all be at their first chunk or all past it (the first chunk has another attention
        pattern); their chunk indices may differ (each stream's own temporal RoPE start). Outputs as `forward`
        with batch B; the B new states are separate (one per stream)."""
        cfg, win = self.cfg, window_size
        B, F, _, H, W = images.shape
        if len(states) != B:
            raise ConfigError(f"HorizonStream: {B} streams in the batch but {len(states)} states")
        firsts = {st.chunk_idx == 0 for st in states}
        if len(firsts) != 1:
            raise ConfigError("HorizonStream: a batch mixes streams at their first chunk with later ones")
        first = firsts.pop()
        if first and win != F:
            raise ConfigError(f"HorizonStream: the first chunk needs window_size={win} frames, got {F}")
        if not first and any(len(st.frame_kv) != cfg.depth for st in states):
            raise ConfigError("HorizonStream: the carried state does not match this model's depth")
        state = states[0] if B == 1 else _stack_states(states)
        gh, gw = H // cfg.patch_size, W // cfg.patch_size
        images = images.reshape(B * F, 3, H, W)
        x = (images - self._resnet_mean.to(images.dtype)) / self._resnet_std.to(images.dtype)
        tokens = self.patch_embed(x)  # [B*F, h*w, C] (rule 3)
        C = tokens.shape[-1]
        if intermediates is not None:
            intermediates["patch_embed_tokens"] = tokens
        patch = torch.cat([*self._special_tokens(B * F, tokens.dtype), tokens], dim=1)  # rule 4
        P = patch.shape[1]
        pose = self._pose_tokens(F, win, first).to(tokens.dtype).repeat(B, 1, 1)  # [B*F*Win, X, C]
        X = pose.shape[1]
        # Rule 6: the temporal start wraps with the period; it uses this chunk's frame count (reference quirk).
        period = cfg.rope_temporal_period
        t_starts = [(st.chunk_idx * F) % period if period > 0 else 0 for st in states]
        patch_pos = torch.cat([spatiotemporal_positions(F, gh, gw, t, self.num_special_tokens, device=images.device)
                               for t in t_starts])
        all_pos = torch.cat([patch_pos, patch_pos.new_zeros(B * F, win * X, 3)], dim=1)
        max_pos = max(max(t_starts) + F, gh, gw)
        keep = set(cfg.output_layers)
        pose_layer = cfg.output_layers[-1]  # rule 11: the last entry of the aggregator's layer list
        outputs: list[torch.Tensor | None] = [None] * cfg.depth
        new = HorizonStreamState(state.chunk_idx + 1, [None] * cfg.depth, [None] * cfg.depth, {})
        pose_out = None
        for layer in range(cfg.depth):
            carried_f = None if first else state.frame_kv[layer]
            patch, pose, new.frame_kv[layer] = self._frame_block(layer, patch, pose, patch_pos, carried_f, win,
                                                                 max_pos, B)
            frame_patch, frame_pose = patch, pose
            tokens_all = torch.cat([patch, pose.reshape(B * F, win * X, C)], dim=1)  # [B*F, A, C]
            if layer in cfg.gla_layers:
                flat = tokens_all.reshape(B, -1, C)
                out, new.kda[layer] = self.global_gla_blocks[str(layer)](flat, None if first else state.kda[layer])
                if intermediates is not None:
                    intermediates[f"gla_block{layer}.input"] = flat
                    intermediates[f"gla_block{layer}.output"] = out
                tokens_all = out.reshape(B * F, -1, C)
            carried_g = None if first else state.global_kv[layer]
            tokens_all, new.global_kv[layer] = self._global_block(layer, tokens_all, all_pos, P, carried_g, win,
                                                                  max_pos, B)
            patch, pose = tokens_all[:, :P], tokens_all[:, P:].reshape(B * F * win, X, C)
            if layer in keep:  # rule 11
                outputs[layer] = torch.cat([frame_patch, patch], dim=-1).reshape(B, F, P, -1)
            if layer == pose_layer:
                pose_out = torch.cat([frame_pose.reshape(B, F, win, X, C)[:, :, :, 0],
                                      pose.reshape(B, F, win, X, C)[:, :, :, 0]], dim=-1)
        assert pose_out is not None
        if B == 1:
            return outputs, pose_out, [new]
        return outputs, pose_out, [_state_of(new, b, st.chunk_idx + 1) for b, st in enumerate(states)]


def _stack_states(states: list[HorizonStreamState]) -> HorizonStreamState:
    """B streams' carried states as one state of batch B (K/V on dim 1, KDA states on dim 0)."""
    s0 = states[0]
    kda = {layer: KDAState(*(torch.cat([getattr(st.kda[layer], f) for st in states])
                             for f in ("recurrent", "conv_q", "conv_k", "conv_v"))) for layer in s0.kda}
    frame_kv = [torch.cat([st.frame_kv[i] for st in states], dim=1) for i in range(len(s0.frame_kv))]
    global_kv = [torch.cat([st.global_kv[i] for st in states], dim=1) for i in range(len(s0.global_kv))]
    return HorizonStreamState(s0.chunk_idx, frame_kv, global_kv, kda)


def _state_of(batch: HorizonStreamState, b: int, chunk_idx: int) -> HorizonStreamState:
    """Stream b's own copy of a batched state (a copy: a view would keep the whole batch's tensors alive)."""
    def take(t: torch.Tensor | None, dim: int) -> torch.Tensor | None:
        return None if t is None else t.narrow(dim, b, 1).clone()

    kda = {layer: KDAState(*(take(getattr(st, f), 0) for f in ("recurrent", "conv_q", "conv_k", "conv_v")))
           for layer, st in batch.kda.items()}
    return HorizonStreamState(chunk_idx, [take(t, 1) for t in batch.frame_kv], [take(t, 1) for t in batch.global_kv],
                              kda)


def _metric_head(dim_in: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """The metric readout MLP `dim_in -> hidden... -> 1` with ReLU between layers and zero biases."""
    widths = (dim_in, *hidden)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], 1))
    for m in layers:
        if isinstance(m, nn.Linear) and m.bias is not None and not m.bias.is_meta:
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class HorizonStream(nn.Module):
    """The HorizonStream network; `forward_chunk(images, state)` runs one chunk of a stream.

    Args:
        config: the architecture (defaults: full size).
        device, dtype: where and in which dtype to create the parameters (e.g. `device="meta"`).
    """

    def __init__(self, config: HorizonStreamConfig | None = None, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = cfg = config or HorizonStreamConfig()
        with torch.device(device) if device is not None else nullcontext():
            dim_in = 2 * cfg.embed_dim
            self.agg_regator = HorizonStreamAggregator(cfg)
            self.cam_decoder = CameraHead(dim_in=dim_in, **asdict(cfg.camera_head))
            # Activations applied in forward_chunk (rule 14), after the metric scale is known.
            self.dpt_decoder = DPTHead(dim_in=dim_in, patch_size=cfg.patch_size, output_dim=2, activation="linear",
                                       conf_activation="linear", **asdict(cfg.depth_head))
            self.metric_readout_head = _metric_head(dim_in, cfg.metric_hidden) if cfg.metric_readout else None
        if dtype is not None:
            self.to(dtype)
        self._attention_key: tuple | None = None

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def select_attention(self, device: torch.device, dtype: torch.dtype, prefer: str | None = None) -> None:
        """Choose attention kernels once (recon.kernels dispatch); the first chunk's global and camera-trunk calls
        are masked, so they get a kernel that takes masks."""
        key = (torch.device(device).type, dtype, prefer)
        if key == self._attention_key:
            return
        impl = select_attention(device, dtype, need_mask=False, prefer=prefer)
        masked = select_attention(device, dtype, need_mask=True, prefer=prefer)
        set_attention_impl(self, impl, masked)
        self._attention_key = key

    def new_state(self) -> HorizonStreamState:
        """The empty state before a stream's first chunk."""
        return HorizonStreamState()

    def new_session(self, **kwargs: Any) -> Any:
        """A live stream with the published chunk schedule and online motion averaging
        (`recon.models.horizonstream_session.HorizonStreamSession`; keyword arguments go to it)."""
        from recon.models.horizonstream_session import HorizonStreamSession

        return HorizonStreamSession(self, **kwargs)

    def forward_chunk(self, images: torch.Tensor, state: HorizonStreamState, window_size: int | None = None,
                      intermediates: dict[str, torch.Tensor] | None = None
                      ) -> tuple[dict[str, torch.Tensor], HorizonStreamState]:
        """Run one chunk.

        Args:
            images: `[F, 3, H, W]` or `[1, F, 3, H, W]` in [0, 1], H and W multiples of the patch size.
            state: what the previous chunk carried (`new_state()` for the first chunk, which needs Win frames).
            window_size: Win (default: the config's).
            intermediates: dict receiving `patch_embed_tokens`, `agg_layer{l}`, `win_pose_tokens`,
                `cam_iter{k}_unscaled`, `metric_readout_features` and `gla_block{l}.input/output`.

        Returns:
            (outputs, state for the next chunk). Outputs: `chunk_cam_map [F, Win, 9]`, `depth [1, F, H, W, 1]`,
            `depth_conf [1, F, H, W]`, for the first chunk `pose_enc [1, Win, 9]` (its last row), and with the
            metric readout `predicted_metric_scale [1]`, already multiplied into depth and translations.
        """
        if images.dim() == 5:
            if images.shape[0] != 1:
                raise ConfigError(f"HorizonStream runs batch 1, got images {tuple(images.shape)}")
            images = images[0]
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"images must be [F,3,H,W] or [1,F,3,H,W], got {tuple(images.shape)}")
        outs, states = self.forward_chunk_batch(images[None], [state], window_size, intermediates)
        return outs[0], states[0]

    def forward_chunk_batch(self, images: torch.Tensor, states: list[HorizonStreamState],
                            window_size: int | None = None, intermediates: dict[str, torch.Tensor] | None = None
                            ) -> tuple[list[dict[str, torch.Tensor]], list[HorizonStreamState]]:
        """One chunk of each of B streams in one model call (the stream batch of a serving node).

        Args:
            images: `[B, F, 3, H, W]`, one chunk per stream, the same F and size (see `forward_batch` for which
                streams may share a batch).
            states: stream b's carried state at `states[b]`.

        Returns:
            (per stream the outputs of `forward_chunk`, per stream its state for the next chunk).
        """
        cfg = self.config
        win = window_size or cfg.window_size
        B, F, _, H, W = images.shape
        first = states[0].chunk_idx == 0
        layers, pose_tokens, new_states = self.agg_regator.forward_batch(images, states, win, intermediates)
        patch_start = self.agg_regator.num_special_tokens
        # Rule 12: rows are frames, each a sequence of Win slots; first chunk masks the trunk per row.
        mask = camera_trunk_mask(F, win, images.device).repeat(B, 1, 1, 1) if first else None
        cams = self.cam_decoder([pose_tokens.reshape(B * F, win, -1)[:, :, None]], attn_mask=mask)
        cam_map = cams[-1].reshape(B, F, win, -1)
        raw, conf_raw = self.dpt_decoder(layers, (H, W), patch_start_idx=patch_start)
        depth = torch.exp(raw)  # rule 14, without the clamp it states (see HorizonStreamConfig)
        conf = 1 + torch.exp(conf_raw)
        scale = None
        if self.metric_readout_head is not None:
            # Rule 13: the metric token (the last special token) of the last layer, averaged over the chunk.
            last = layers[cfg.depth - 1]
            assert last is not None
            feats = last[:, :, patch_start - 1].mean(dim=1)  # [B, 2C]
            scale = torch.exp(self.metric_readout_head(feats)).reshape(B)
            if intermediates is not None:
                intermediates["metric_readout_features"] = feats
        results = []
        for b in range(B):
            out = {"chunk_cam_map": cam_map[b], "depth": depth[b:b + 1], "depth_conf": conf[b:b + 1]}
            if scale is not None:
                sb = scale[b:b + 1]
                out["chunk_cam_map"] = torch.cat([cam_map[b, ..., :3] * sb, cam_map[b, ..., 3:]], dim=-1)
                out["depth"] = depth[b:b + 1] * sb
                out["predicted_metric_scale"] = sb
            if first:
                out["pose_enc"] = out["chunk_cam_map"][-1:]
            results.append(out)
        if intermediates is not None:
            for layer, t in enumerate(layers):
                if t is not None:
                    intermediates[f"agg_layer{layer}"] = t
            intermediates["win_pose_tokens"] = pose_tokens
            for i, c in enumerate(cams):
                intermediates[f"cam_iter{i}_unscaled"] = c
        return results, new_states


def random_init(model: HorizonStream, seed: int = 0) -> HorizonStream:
    """Random weights that give usable-looking outputs (demos, tests, benchmarks; never for accuracy).

    Default init leaves the special tokens at ~0 and the camera head's FoV near zero (relu-clipped, infinite focal
    length) with a near-zero quaternion: we redraw the tokens, bias the pose branch to identity rotation and
    ~1 rad fields of view, and damp the depth head's output so depth stays near exp(0) = 1 (times the scale).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_meta:
                continue
            if name.endswith(("_token", "tokens", "pos_embed")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        fc2 = model.cam_decoder.pose_branch.fc2
        fc2.weight.mul_(0.01)
        bias = torch.zeros_like(fc2.bias)
        n_it = model.cam_decoder.num_iterations
        bias[6] = 1.0 / n_it  # qw accumulates over the iterations
        bias[7] = bias[8] = 1.0 / n_it
        fc2.bias.copy_(bias)
        out = model.dpt_decoder.scratch.output_conv2[-1]
        out.weight.mul_(0.01)
        out.bias.zero_()
    return model


def build_horizonstream(*, weights: str | None = None, model_config: str = "full", seed: int = 0,
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> HorizonStream:
    """A HorizonStream ready for inference.

    Args:
        weights: checkpoint path (HorizonStream.pt); None with "full": the installed `horizonstream` entry
            (`recon weights pull horizonstream`). With "tiny" and no weights: random weights (`random_init`).
        model_config: "full" (published size) or "tiny" (the golden fixture's size).
        seed: random-init seed.
        device, dtype: where the parameters live and their dtype.
    """
    if model_config not in ("full", "tiny"):
        raise ConfigError(f"horizonstream model_config must be 'full' or 'tiny', got {model_config!r}")
    if model_config == "full":
        from recon.models.weights import load_pretrained

        return load_pretrained("horizonstream", weights, device=device, dtype=dtype)
    if weights is not None:
        from recon.models.registry import tiny_variant
        from recon.models.weights import load_pretrained

        return load_pretrained(tiny_variant("horizonstream"), weights, device=device, dtype=dtype)
    from recon.models.seeding import seeded

    with seeded(seed):
        model = HorizonStream(tiny_config())
    logger.info("tiny HorizonStream with random weights (seed %d): outputs are not meaningful", seed)
    random_init(model, seed)
    return model.to(device=device, dtype=dtype).eval()
