"""VGGT camera head: adaLN-modulated transformer trunk with iterative pose refinement.

Behaviour: facebookresearch/vggt@44b3afb:vggt/heads/camera_head.py:19-149 (reference notes §1.3):
- input is `token_norm` of token 0 (the camera token) of the last aggregator entry;
- each of `num_iterations` iterations embeds the previous *raw* (pre-activation) pose (or the learned
  `empty_pose_tokens` first), modulates `t` with shift/scale/gate (`gate*(adaln(t)*(1+scale)+shift) + t`, always
  from the same `t`), runs the trunk, and adds `pose_branch(trunk_norm(.))` to the raw pose;
- every iteration's *activated* pose is returned (T, quaternion linear; FoV relu).

The trunk attends across the frames' camera tokens. Three modes:
- full (VGGT): every frame sees every frame;
- causal (StreamVGGT batch): frame t sees frames <= t, per iteration;
- streaming (`forward_step`): one frame per call with K/V caches indexed `[iteration][layer]`. Passing the same
  per-layer caches for every iteration reproduces the published StreamVGGT code (quirk A: all iterations append
  to one cache per trunk layer, wzzheng/StreamVGGT@3e28c5c:src/streamvggt/heads/camera_head.py:136-144); separate
  caches per iteration equal the causal batch pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from recon.models.layers.block import Block
from recon.models.layers.head_act import activate_pose
from recon.models.layers.mlp import Mlp


@dataclass
class CameraHeadConfig:
    """Camera head settings (defaults: VGGT-1B)."""

    trunk_depth: int = 4
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float = 0.01
    trans_act: str = "linear"
    quat_act: str = "linear"
    fl_act: str = "relu"
    num_iterations: int = 4
    norm_eps: float = 1e-5
    adaln_eps: float = 1e-6


if TYPE_CHECKING:
    from recon.memory.kv_cache import KVCache


class CameraHead(nn.Module):
    """Predicts the 9-value absT_quaR_FoV encoding (camera-from-world, scale-normalised) per frame.

    Args:
        dim_in: token width (2 * aggregator embed_dim).
        trunk_depth, num_heads, mlp_ratio, init_values: trunk blocks (no qk-norm, no RoPE).
        target_dim: pose encoding size (9 for absT_quaR_FoV).
        trans_act, quat_act, fl_act: output activations.
        num_iterations: refinement iterations (4).
        norm_eps: eps of `token_norm`, `trunk_norm` and the trunk blocks (1e-5).
        adaln_eps: eps of the non-affine `adaln_norm` (1e-6).
    """

    def __init__(self, dim_in: int = 2048, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0,
                 init_values: float = 0.01, target_dim: int = 9, trans_act: str = "linear",
                 quat_act: str = "linear", fl_act: str = "relu", num_iterations: int = 4, norm_eps: float = 1e-5,
                 adaln_eps: float = 1e-6) -> None:
        super().__init__()
        self.target_dim = target_dim
        self.trans_act, self.quat_act, self.fl_act = trans_act, quat_act, fl_act
        self.num_iterations = num_iterations
        self.trunk_depth = trunk_depth
        self.trunk = nn.Sequential(*[
            Block(dim_in, num_heads, mlp_ratio, init_values=init_values, norm_eps=norm_eps)
            for _ in range(trunk_depth)
        ])
        self.token_norm = nn.LayerNorm(dim_in, eps=norm_eps)
        self.trunk_norm = nn.LayerNorm(dim_in, eps=norm_eps)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, target_dim))
        self.embed_pose = nn.Linear(target_dim, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in, bias=True))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=adaln_eps)
        self.pose_branch = Mlp(dim_in, dim_in // 2, target_dim)

    def _refine(self, tokens_list: Sequence[torch.Tensor | None], num_iterations: int | None, trunk) -> list:
        last = tokens_list[-1]
        assert last is not None, "the camera head needs the last aggregator entry"
        t = self.token_norm(last[:, :, 0])
        B, S, _ = t.shape
        raw: torch.Tensor | None = None
        out = []
        for it in range(num_iterations or self.num_iterations):
            if raw is None:
                inp = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1))
            else:
                inp = self.embed_pose(raw.detach())
            shift, scale, gate = self.poseLN_modulation(inp).chunk(3, dim=-1)
            y = gate * (self.adaln_norm(t) * (1 + scale) + shift) + t
            y = trunk(y, it)
            delta = self.pose_branch(self.trunk_norm(y))
            raw = delta if raw is None else raw + delta
            out.append(activate_pose(raw, self.trans_act, self.quat_act, self.fl_act))
        return out

    def forward(self, tokens_list: Sequence[torch.Tensor | None], num_iterations: int | None = None,
                causal: bool = False, attn_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """All frames at once: returns one `[B, S, 9]` activated pose per iteration.

        Args:
            tokens_list: aggregator outputs, `[B, S, P, dim_in]` each (only the last is read).
            num_iterations: override of the refinement count.
            causal: frame-causal trunk attention (StreamVGGT batch mode).
            attn_mask: explicit trunk mask (bool, True = may attend), broadcastable to `[B, heads, S, S]`; used
                instead of `causal` (HorizonStream's per-row mask over window slots in its first chunk).
        """
        S = tokens_list[-1].shape[1]
        mask = attn_mask
        if causal and attn_mask is None:
            mask = torch.ones(S, S, dtype=torch.bool, device=tokens_list[-1].device).tril()

        def trunk(y: torch.Tensor, _it: int) -> torch.Tensor:
            for blk in self.trunk:
                y = blk(y, attn_mask=mask)
            return y

        return self._refine(tokens_list, num_iterations, trunk)

    def forward_step(self, tokens_list: Sequence[torch.Tensor | None], caches: Sequence[Sequence[KVCache]],
                     num_iterations: int | None = None) -> list[torch.Tensor]:
        """One new frame (`[B, 1, P, dim_in]` entries) against cached earlier frames.

        Args:
            tokens_list: aggregator outputs for the new frame.
            caches: `caches[iteration][layer]`; the same per-layer caches for every iteration reproduces the
                reference streaming code (quirk A), distinct caches per iteration equal the causal batch pass.
            num_iterations: override of the refinement count.
        """

        def trunk(y: torch.Tensor, it: int) -> torch.Tensor:
            for layer, blk in enumerate(self.trunk):
                y = blk(y, kv_cache=caches[it][layer])
            return y

        return self._refine(tokens_list, num_iterations, trunk)
