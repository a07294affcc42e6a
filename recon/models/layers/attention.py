"""Multi-head self-attention with optional per-head qk-norm, 2D RoPE, masks and a streaming KV cache.

One implementation serves the DINOv2 blocks (no qk-norm, no RoPE), the aggregator's frame and global blocks
(qk-norm + RoPE, facebookresearch/vggt@44b3afb:vggt/layers/attention.py:21-72) and the camera trunk (plain).
Key names (`qkv`, `q_norm`, `k_norm`, `proj`) follow the official checkpoints.

Streaming: when a `KVCache` (recon.memory) is given, the new tokens' keys are appended *after* qk-norm and
RoPE (post-norm, post-RoPE keys, as InfiniteVGGT caches them; bitwise equal to StreamVGGT's re-normalising of
raw keys, README_vggt_family.md "Stream keys"), the cache's eviction policy runs, and the queries attend to
whatever the cache then holds. RoPE therefore runs once per key, when it is written; cached keys are never
rotated again. A static cache (`StaticKVCache`) hands back its whole storage and a key mask instead.

Head-wise gate (HorizonStream, ../shared/golden/horizonstream_tiny/README.md rule 10): with `gate_attn="headwise"`
a `gate_proj` linear maps the mean over the call's tokens of the (normed) input to one sigmoid gate per head,
multiplied onto that head's attention output before `proj`. `project_qkv` and `attend` expose the two halves of
`forward` so a model can attend to keys/values it assembles itself (HorizonStream's windowed caches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from recon.kernels.attention import AttentionImpl, attention
from recon.models.layers.rope import RotaryPositionEmbedding2D

if TYPE_CHECKING:
    from recon.memory.kv_cache import KVCache


class Attention(nn.Module):
    """`proj(softmax(q k^T / sqrt(d)) v)` over `[B, N, C]` tokens.

    Args:
        dim: token width.
        num_heads: heads; head_dim = dim // num_heads.
        qkv_bias: bias on the fused qkv projection.
        proj_bias: bias on the output projection.
        qk_norm: LayerNorm over head_dim on q and k (before RoPE), as in the VGGT aggregator.
        qk_norm_eps: eps of those norms (1e-5 in the reference).
        qk_norm_affine: whether those norms are affine (they are in the checkpoints).
        rope: shared RoPE module (2D, or the 3D subclass), or None.
        gate_attn: None, or "headwise" for a per-head sigmoid gate from the mean token (`gate_proj`, initialised
            to weight 0 and bias 2 as in HorizonStream, so the gate starts at sigmoid(2) ~ 0.88).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_bias: bool = True,
                 qk_norm: bool = False, qk_norm_eps: float = 1e-5, qk_norm_affine: bool = True,
                 rope: RotaryPositionEmbedding2D | None = None, gate_attn: str | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if qk_norm:
            self.q_norm: nn.Module = nn.LayerNorm(self.head_dim, eps=qk_norm_eps, elementwise_affine=qk_norm_affine)
            self.k_norm: nn.Module = nn.LayerNorm(self.head_dim, eps=qk_norm_eps, elementwise_affine=qk_norm_affine)
        else:
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope
        if gate_attn not in (None, "headwise"):
            raise ValueError(f"Attention: gate_attn must be None or 'headwise', got {gate_attn!r}")
        self.gate_attn = gate_attn
        if gate_attn == "headwise":
            self.gate_proj = nn.Linear(dim, num_heads, bias=True)
            nn.init.zeros_(self.gate_proj.weight)
            nn.init.constant_(self.gate_proj.bias, 2.0)
        # Kernels chosen once per model by `set_attention_impl` (recon.kernels dispatch); None: plain SDPA.
        self.attn_impl: AttentionImpl | None = None
        self.attn_impl_masked: AttentionImpl | None = None

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, max_position: int | None = None) -> torch.Tensor:
        """Attend over `x [B, N, C]`.

        Args:
            x: tokens.
            pos: `[B, N, 2]` integer RoPE positions (ignored without RoPE).
            attn_mask: boolean `[N, N_keys]` (True = may attend) or additive mask; None for full attention.
            kv_cache: streaming cache; the tokens' K/V are appended and the queries attend to the cache.
            max_position: largest value in `pos`, to avoid a device sync when building the RoPE table.
        """
        q, k, v = self.project_qkv(x, pos, max_position)
        if getattr(kv_cache, "batched", False):  # recon.models.batched: one cache per batch element
            return self.finish(kv_cache.attend(q, k, v, self.attn_impl, self.attn_impl_masked), x)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
            key_mask = getattr(kv_cache, "key_mask", None)  # caches of other memories may not have one
            if attn_mask is None and key_mask is not None:
                attn_mask = key_mask()  # static caches: the whole storage, invalid rows masked
        return self.attend(q, k, v, x, attn_mask)

    def project_qkv(self, x: torch.Tensor, pos: torch.Tensor | None = None, max_position: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v `[B, heads, N, head_dim]` of `x [B, N, C]`: after qk-norm and RoPE, in v's dtype."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q = self.rope(q, pos, max_position)
            k = self.rope(k, pos, max_position)
        # Under autocast the q/k LayerNorms return fp32 while v is bf16/fp16: attend (and cache) in v's dtype,
        # as SDPA's autocast would, so the cache holds half-precision K and fused kernels get one dtype.
        return q.to(v.dtype), k.to(v.dtype), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor,
               attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`proj(gate * attention(q, k, v))` back to `[B, N, C]`; `x [B, N, C]` is the input the gate pools."""
        impl = self.attn_impl if attn_mask is None else self.attn_impl_masked
        return self.finish(attention(q, k, v, attn_mask=attn_mask, impl=impl), x)

    def finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`proj(gate * out)` for an attention output `out [B, heads, N, head_dim]` of the input `x [B, N, C]`."""
        B, N, C = x.shape
        if self.gate_attn == "headwise":
            gate = torch.sigmoid(self.gate_proj(x.mean(dim=1)))  # [B, heads]
            out = out * gate.to(out.dtype)[:, :, None, None]
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


def set_attention_impl(module: nn.Module, impl: AttentionImpl | None, impl_masked: AttentionImpl | None) -> None:
    """Give every `Attention` under `module` its kernels: `impl` for unmasked calls (frame blocks, KV-cached
    streaming), `impl_masked` for masked ones (block-causal batches; FlashAttention cannot take a mask)."""
    for m in module.modules():
        if isinstance(m, Attention):
            m.attn_impl, m.attn_impl_masked = impl, impl_masked
