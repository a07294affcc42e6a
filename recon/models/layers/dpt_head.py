"""DPT dense-prediction head (depth and point variants) of VGGT.

Behaviour: facebookresearch/vggt@44b3afb:vggt/heads/dpt_head.py and heads/utils.py (reference notes §1.4).
Quirks kept on purpose (README_vggt_family.md, "DPT heads"):
- `ResidualConvUnit` applies an in-place ReLU to its input in the reference, so its skip adds **relu(x)**, not x;
- `refinenet4` has no first residual unit; fusion resizes are bilinear with `align_corners=True`;
- **float32 island**: the UV position embedding is built on a grid in the feature dtype, sin/cos are taken in
  float64, the result is cast to float32, scaled by 0.1 in float32, then added (after each 1x1 projection and
  once more after the final resize).
Key names (`norm`, `projects`, `resize_layers.{0,1,3}`, `scratch.layerN_rn`, `scratch.refinenetN`,
`scratch.output_conv1/2`) follow the checkpoints; `resize_layers.2` is an Identity with no keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recon.models.layers.head_act import activate_head


@dataclass
class DPTConfig:
    """DPT head settings shared by the depth and point heads (defaults: VGGT-1B)."""

    features: int = 256
    out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23)
    pos_embed: bool = True
    down_ratio: int = 1
    head_features_2: int = 32
    pos_embed_ratio: float = 0.1
    pos_embed_omega_0: float = 100.0
    norm_eps: float = 1e-5
    frames_chunk_size: int | None = 8


def uv_grid(width: int, height: int, aspect_ratio: float, dtype: torch.dtype, device: torch.device
            ) -> torch.Tensor:
    """`[height, width, 2]` (u, v) grid whose spans are normalised by the diagonal of the aspect ratio."""
    diag = (aspect_ratio ** 2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    x_end = span_x * (width - 1) / width
    y_end = span_y * (height - 1) / height
    xs = torch.linspace(-x_end, x_end, steps=width, dtype=dtype, device=device)
    ys = torch.linspace(-y_end, y_end, steps=height, dtype=dtype, device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([uu, vv], dim=-1)


def _sincos(dim: int, pos: torch.Tensor, omega_0: float) -> torch.Tensor:
    """`[M, dim]` = [sin | cos] of `pos * omega`, computed in float64 and returned as float32 (island)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / omega_0 ** (omega / (dim / 2.0))
    angles = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def uv_position_embedding(x: torch.Tensor, image_w: int, image_h: int, ratio: float = 0.1,
                          omega_0: float = 100.0) -> torch.Tensor:
    """The sinusoidal UV embedding for feature map `x [N, C, h, w]`, float32 `[1, C, h, w]` already scaled."""
    h, w = x.shape[-2:]
    grid = uv_grid(w, h, image_w / image_h, x.dtype, x.device).reshape(-1, 2)
    C = x.shape[1]
    emb = torch.cat([_sincos(C // 2, grid[:, 0], omega_0), _sincos(C // 2, grid[:, 1], omega_0)], dim=-1)
    emb = emb.view(h, w, C) * ratio  # float32 multiply, as the reference
    return emb.permute(2, 0, 1)[None]


class ResidualConvUnit(nn.Module):
    """`conv2(relu(conv1(relu(x)))) + relu(x)`: the skip adds relu(x) (the reference's in-place ReLU quirk)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """`out_conv(resize(rcu2(x0 + rcu1(x1))))`; without `has_residual` there is no `resConfUnit1`."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.has_residual = has_residual
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, stride=1, padding=0, bias=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: Sequence[int] | None = None) -> torch.Tensor:
        if self.has_residual and skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Dense head over four aggregator entries; returns (values `[B,S,H,W,C]`, confidence `[B,S,H,W]`).

    Args:
        dim_in: token width (2 * aggregator embed_dim).
        patch_size: ViT patch size (14).
        output_dim: channels before activation, the last being confidence (depth 2, points 4).
        activation, conf_activation: value/confidence activations (depth: exp/expp1; points: inv_log/expp1).
        features: fusion width (256).
        out_channels: projection widths of the four levels ([256, 512, 1024, 1024]).
        intermediate_layer_idx: aggregator entries read ([4, 11, 17, 23]).
        pos_embed: add the UV embedding.
        down_ratio: output stride relative to the input (1).
        head_features_2: width of the last hidden conv (32).
        pos_embed_ratio, pos_embed_omega_0: UV embedding scale (0.1) and base (100).
        norm_eps: eps of the shared token LayerNorm (1e-5).
        frames_chunk_size: frames processed per chunk (8), bounding activation memory.
    """

    def __init__(self, dim_in: int = 2048, patch_size: int = 14, output_dim: int = 4, activation: str = "inv_log",
                 conf_activation: str = "expp1", features: int = 256,
                 out_channels: Sequence[int] = (256, 512, 1024, 1024),
                 intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23), pos_embed: bool = True,
                 down_ratio: int = 1, head_features_2: int = 32, pos_embed_ratio: float = 0.1,
                 pos_embed_omega_0: float = 100.0, norm_eps: float = 1e-5, frames_chunk_size: int | None = 8) -> None:
        super().__init__()
        oc = list(out_channels)
        self.patch_size = patch_size
        self.activation, self.conf_activation = activation, conf_activation
        self.intermediate_layer_idx = list(intermediate_layer_idx)
        self.pos_embed = pos_embed
        self.down_ratio = down_ratio
        self.pos_embed_ratio, self.pos_embed_omega_0 = pos_embed_ratio, pos_embed_omega_0
        self.frames_chunk_size = frames_chunk_size
        self.norm = nn.LayerNorm(dim_in, eps=norm_eps)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, c, kernel_size=1) for c in oc])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, kernel_size=3, padding=1, bias=False))
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, head_features_2, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(head_features_2, output_dim, kernel_size=1),
        )

    def _add_pos(self, x: torch.Tensor, W: int, H: int) -> torch.Tensor:
        return x + uv_position_embedding(x, W, H, self.pos_embed_ratio, self.pos_embed_omega_0)

    def _forward_frames(self, tokens_list: Sequence[torch.Tensor | None], H: int, W: int, patch_start_idx: int,
                        s0: int, s1: int) -> tuple[torch.Tensor, torch.Tensor]:
        gh, gw = H // self.patch_size, W // self.patch_size
        feats = []
        for level, layer in enumerate(self.intermediate_layer_idx):
            tokens = tokens_list[layer]
            assert tokens is not None, f"DPT head needs aggregator entry {layer}"
            x = tokens[:, s0:s1, patch_start_idx:]
            B, S = x.shape[:2]
            x = self.norm(x.reshape(B * S, -1, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(B * S, -1, gh, gw)
            x = self.projects[level](x)
            if self.pos_embed:
                x = self._add_pos(x, W, H)
            feats.append(self.resize_layers[level](x))
        l1, l2, l3, l4 = (getattr(self.scratch, f"layer{i + 1}_rn")(f) for i, f in enumerate(feats))
        out = self.scratch.refinenet4(l4, size=l3.shape[2:])
        out = self.scratch.refinenet3(out, l3, size=l2.shape[2:])
        out = self.scratch.refinenet2(out, l2, size=l1.shape[2:])
        out = self.scratch.refinenet1(out, l1)
        out = self.scratch.output_conv1(out)
        size = (int(gh * self.patch_size / self.down_ratio), int(gw * self.patch_size / self.down_ratio))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        if self.pos_embed:
            out = self._add_pos(out, W, H)
        out = self.scratch.output_conv2(out)
        values, conf = activate_head(out, self.activation, self.conf_activation)
        return values.reshape(B, S, *values.shape[1:]), conf.reshape(B, S, *conf.shape[1:])

    def forward(self, tokens_list: Sequence[torch.Tensor | None], image_hw: tuple[int, int],
                patch_start_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run on aggregator outputs `[B, S, P, dim_in]` for images of size `image_hw`."""
        H, W = image_hw
        S = next(t for t in tokens_list if t is not None).shape[1]
        chunk = self.frames_chunk_size
        if not chunk or chunk >= S:
            return self._forward_frames(tokens_list, H, W, patch_start_idx, 0, S)
        parts = [self._forward_frames(tokens_list, H, W, patch_start_idx, s, min(s + chunk, S))
                 for s in range(0, S, chunk)]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)
