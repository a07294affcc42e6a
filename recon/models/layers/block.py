"""Pre-norm transformer block: `x += ls1(attn(norm1(x)))`, `x += ls2(mlp(norm2(x)))`.

Used unchanged by the DINOv2 patch embed (LayerNorm eps 1e-6, LayerScale 1.0), the aggregator's frame and
global blocks (eps 1e-5, qk-norm, RoPE, LayerScale 0.01) and the camera trunk (eps 1e-5, plain attention).
Key names (`norm1`, `attn`, `ls1`, `norm2`, `mlp`, `ls2`) follow the official checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recon.models.layers.attention import Attention
from recon.models.layers.layer_scale import LayerScale
from recon.models.layers.mlp import Mlp
from recon.models.layers.rope import RotaryPositionEmbedding2D

if TYPE_CHECKING:
    from recon.memory.kv_cache import KVCache


class Block(nn.Module):
    """One transformer block; every knob of the reference `Block` is an argument.

    Args:
        dim, num_heads, mlp_ratio: sizes (MLP hidden = int(dim * mlp_ratio)).
        qkv_bias, proj_bias, ffn_bias: biases of the qkv, output and MLP linears.
        init_values: LayerScale init (None disables LayerScale, as in a block without `ls*` keys).
        norm_eps: eps of `norm1`/`norm2`.
        qk_norm, qk_norm_eps, qk_norm_affine: per-head q/k LayerNorm.
        rope: shared RoPE module or None.
        gate_attn: None or "headwise" (HorizonStream's per-head sigmoid gate, see `Attention`).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, init_values: float | None = None,
                 norm_eps: float = 1e-5, qk_norm: bool = False, qk_norm_eps: float = 1e-5,
                 qk_norm_affine: bool = True, rope: RotaryPositionEmbedding2D | None = None,
                 gate_attn: str | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm,
                              qk_norm_eps=qk_norm_eps, qk_norm_affine=qk_norm_affine, rope=rope,
                              gate_attn=gate_attn)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, max_position: int | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos, attn_mask=attn_mask, kv_cache=kv_cache,
                                   max_position=max_position))
        return x + self.ls2(self.mlp(self.norm2(x)))
