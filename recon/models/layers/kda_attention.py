"""Kimi Delta Attention (KDA) layer: HorizonStream's "geometric linear attention" block.

Key names follow flash-linear-attention's `fla.layers.kda.KimiDeltaAttention`, so HorizonStream checkpoints load
strictly. Per token: q, k, v = SiLU(causal depthwise conv(proj(x))) with a 4-tap kernel; q and k L2-normalised
per head; a per-key-channel log decay g = -exp(A_log) * softplus(f_proj(x) + dt_bias); write strength
beta = sigmoid(b_proj(x)); the gated delta rule (recon.kernels.kda); then a per-head RMSNorm gated by
sigmoid(g_proj(x)) and the output projection. No positions, no mask.

State carried across calls (`KDAState`): the recurrent state, stored value-major [B,H,V,K] as fla >= 0.5.2 does,
and the last 4 raw projected inputs of each short convolution [B,D,4] (newest last).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recon.kernels.kda import activate_kda_inputs, gated_delta_rule, l2_normalize


@dataclass
class KDAState:
    """State a KDA layer carries from one call to the next (constant size, detached)."""

    recurrent: torch.Tensor  # [B,H,V,K] value-major
    conv_q: torch.Tensor  # [B,key_dim,conv_size]
    conv_k: torch.Tensor
    conv_v: torch.Tensor


class KimiDeltaAttention(nn.Module):
    """Gated delta-rule linear attention with per-channel decay.

    Args:
        hidden_size: model width C.
        num_heads: heads H; head_dim: key dim K per head; expand_v: value dim factor (V = K * expand_v).
        conv_size: short causal convolution taps. norm_eps: output RMSNorm epsilon. l2_eps: q/k norm epsilon.
        impl: gated-delta-rule implementation (None: best for the device, see recon.kernels.kda).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        expand_v: float = 1.0,
        conv_size: int = 4,
        norm_eps: float = 1e-5,
        l2_eps: float = 1e-6,
        impl: str | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads, self.head_k = num_heads, head_dim
        self.key_dim = num_heads * head_dim
        self.value_dim = int(self.key_dim * expand_v)
        self.head_v = self.value_dim // num_heads
        self.conv_size, self.norm_eps, self.l2_eps, self.impl = conv_size, norm_eps, l2_eps, impl
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False, **kw)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False, **kw)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False, **kw)
        self.q_conv1d = nn.Conv1d(self.key_dim, self.key_dim, conv_size, groups=self.key_dim, bias=False, **kw)
        self.k_conv1d = nn.Conv1d(self.key_dim, self.key_dim, conv_size, groups=self.key_dim, bias=False, **kw)
        self.v_conv1d = nn.Conv1d(self.value_dim, self.value_dim, conv_size, groups=self.value_dim, bias=False, **kw)
        self.f_proj = nn.Sequential(nn.Linear(hidden_size, self.head_v, bias=False, **kw),
                                    nn.Linear(self.head_v, self.key_dim, bias=False, **kw))
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=False, **kw)
        self.A_log = nn.Parameter(torch.zeros(num_heads, **kw))
        self.dt_bias = nn.Parameter(torch.zeros(self.key_dim, **kw))
        self.g_proj = nn.Sequential(nn.Linear(hidden_size, self.head_v, bias=False, **kw),
                                    nn.Linear(self.head_v, self.value_dim, bias=True, **kw))
        self.o_norm = _HeadRMSNormWeight(self.head_v, **kw)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False, **kw)

    def initial_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> KDAState:
        """All-zero state (before the first call). The recurrent state is float32 whatever the compute dtype: it
        integrates the whole stream, and bf16 rounding of it would accumulate chunk after chunk."""
        z = lambda d: torch.zeros(batch, d, self.conv_size, device=device, dtype=dtype)  # noqa: E731
        rec = torch.zeros(batch, self.num_heads, self.head_v, self.head_k, device=device, dtype=torch.float32)
        return KDAState(rec, z(self.key_dim), z(self.key_dim), z(self.value_dim))

    def _short_conv(self, raw: torch.Tensor, conv: nn.Conv1d, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise conv over [B,T,D] continuing from the previous raw inputs; SiLU after."""
        x = torch.cat([state, raw.transpose(1, 2)], dim=2)  # [B,D,conv+T]
        out = F.conv1d(x[:, :, 1:], conv.weight, groups=conv.weight.shape[0])
        return F.silu(out.transpose(1, 2)), x[:, :, -self.conv_size:]

    def forward(
        self, x: torch.Tensor, state: KDAState | None = None, *, intermediates: dict | None = None
    ) -> tuple[torch.Tensor, KDAState]:
        """x [B,T,C] -> (y [B,T,C], new state). Pass a dict as `intermediates` to receive internal tensors."""
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_k, self.head_v
        state = state or self.initial_state(B, x.device, x.dtype)
        q, conv_q = self._short_conv(self.q_proj(x), self.q_conv1d, state.conv_q)
        k, conv_k = self._short_conv(self.k_proj(x), self.k_conv1d, state.conv_k)
        v, conv_v = self._short_conv(self.v_proj(x), self.v_conv1d, state.conv_v)
        q, k, v = q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)
        q_l2, k_l2 = l2_normalize(q, self.l2_eps), l2_normalize(k, self.l2_eps)
        f_raw = self.f_proj(x).view(B, T, H, K)
        beta_logit = self.b_proj(x)
        g, beta = activate_kda_inputs(f_raw, beta_logit, self.A_log, self.dt_bias)
        o, S = gated_delta_rule(q_l2, k_l2, v, g, beta, scale=K**-0.5,
                                initial_state=state.recurrent.transpose(-1, -2), impl=self.impl)
        gate_logit = self.g_proj(x).view(B, T, H, V)
        o_normed = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.norm_eps) * self.o_norm.weight
        o_normed = o_normed * gate_logit.sigmoid()
        y = self.o_proj(o_normed.reshape(B, T, H * V))
        if intermediates is not None:
            intermediates.update(q_conv=q, k_conv=k, v_conv=v, q_l2=q_l2, k_l2=k_l2, f_raw=f_raw, g_logdecay=g,
                                 beta_logit=beta_logit, beta=beta, o_core=o, out_gate_logit=gate_logit,
                                 o_normed=o_normed)
        new_state = KDAState(S.transpose(-1, -2).detach(), conv_q.detach(), conv_k.detach(), conv_v.detach())
        return y, new_state


class _HeadRMSNormWeight(nn.Module):
    """Holds the per-head RMSNorm weight under the checkpoint's name `o_norm.weight`."""

    def __init__(self, dim: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
