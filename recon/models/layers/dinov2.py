"""DINOv2 vision transformer with register tokens: the patch embedding of the VGGT aggregator.

Behaviour follows facebookresearch/vggt@44b3afb:vggt/layers/vision_transformer.py (reference notes in
../shared/reference/vggt_family.md §1.2); key names are the checkpoint's (`patch_embed.proj`, `cls_token`,
`pos_embed`, `register_tokens`, `mask_token`, `blocks.N`, `norm`).

Quirks kept on purpose:
- the learned pos-embed is added to cls + patches *before* the registers are inserted after cls, so the
  registers carry no position;
- **float32 island**: the pos-embed grid is resized in float32 with bicubic antialiased interpolation to the
  image's patch grid (skipped only when the grid matches and the image is square) and cast back to the token
  dtype (README_vggt_family.md, "Float32 islands" 2);
- only `x_norm_patchtokens` (final norm, cls and registers dropped) is used by the aggregator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recon.models.layers.block import Block

# The normalisation DINOv2 (and the ResNet stems beside it) were trained with: images in [0,1] minus mean over std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DinoConfig:
    """DINOv2 patch-embed settings (defaults: ViT-L/14 with 4 registers, as in VGGT-1B)."""

    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    init_values: float = 1.0
    norm_eps: float = 1e-6
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0


class PatchEmbed(nn.Module):
    """Non-overlapping patchify conv: `[B,3,H,W] -> [B, (H/p)*(W/p), dim]`."""

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1024) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT with registers; `forward(images)` returns `x_norm_patchtokens [B, h*w, dim]`.

    Args:
        img_size: training image size; the pos-embed grid is (img_size / patch_size)^2 (+1 for cls).
        patch_size, embed_dim, depth, num_heads, mlp_ratio: sizes (ViT-L/14: 14, 1024, 24, 16, 4).
        num_register_tokens: register tokens inserted after cls (4 in VGGT).
        qkv_bias, proj_bias, ffn_bias: linear biases.
        init_values: LayerScale init (1.0 as the aggregator builds it).
        norm_eps: LayerNorm eps (1e-6 for DINOv2).
        interpolate_antialias: antialias flag of the bicubic pos-embed resize (True in VGGT).
        interpolate_offset: DINOv2's scale-factor offset; 0 (VGGT) resizes to the exact grid size.
        pos_embed_float32: resize the pos-embed in float32 (the reference's island); False resizes in the
            parameter dtype (a reference run patched to float64, e.g. pi3_tiny f64).
        mask_token: build the (unused) mask token; pi3 deletes it from its encoder.
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_register_tokens: int = 4,
                 qkv_bias: bool = True, proj_bias: bool = True, ffn_bias: bool = True,
                 init_values: float | None = 1.0, norm_eps: float = 1e-6, interpolate_antialias: bool = True,
                 interpolate_offset: float = 0.0, pos_embed_float32: bool = True, mask_token: bool = True) -> None:
        super().__init__()
        self.pos_embed_float32 = pos_embed_float32
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        if mask_token:  # unused at inference but present in VGGT checkpoints (grad disabled in the reference)
            self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_bias=proj_bias, ffn_bias=ffn_bias,
                  init_values=init_values, norm_eps=norm_eps)
            for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def interpolate_pos_encoding(self, num_patches: int, height: int, width: int, dtype: torch.dtype
                                 ) -> torch.Tensor:
        """The pos-embed (cls row first) for an image of `height` x `width` pixels, `[1, 1 + h*w, dim]`."""
        n_ref = self.pos_embed.shape[1] - 1
        if num_patches == n_ref and height == width:
            return self.pos_embed
        pos = self.pos_embed.float() if self.pos_embed_float32 else self.pos_embed  # float32 island
        cls_pos, grid_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        side = int(math.sqrt(n_ref))
        gh, gw = height // self.patch_size, width // self.patch_size
        if self.interpolate_offset:
            scale = ((gh + self.interpolate_offset) / side, (gw + self.interpolate_offset) / side)
            kwargs: dict = {"scale_factor": scale}
        else:
            kwargs = {"size": (gh, gw)}
        grid = grid_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, mode="bicubic", antialias=self.interpolate_antialias, **kwargs)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([cls_pos, grid], dim=1).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`images [B,3,H,W]` (already normalised) -> patch tokens after the final norm, `[B, h*w, dim]`."""
        B, _, H, W = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(x.shape[1] - 1, H, W, x.dtype)
        x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x[:, 1 + self.num_register_tokens:]
