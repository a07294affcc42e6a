"""Gated delta rule with per-channel decay (Kimi Delta Attention, KDA): torch references and dispatch.

Per head, with a key-major state S [K,V] (starting at S0):

    S <- diag(exp(g_t)) S                       (per-key-channel decay, g_t <= 0 in log space)
    S <- S + beta_t k_t (v_t - k_t^T S)^T        (delta-rule write)
    o_t = scale * q_t^T S

Three implementations share this contract (q,k [B,T,H,K], v [B,T,H,V], g [B,T,H,K], beta [B,T,H], state
[B,H,K,V] key-major; inputs already activated: q,k normalised, g the log decay, beta in (0,1)):
- `kda_recurrent`: the per-token loop, the ground truth;
- `kda_chunked`: the chunk-parallel (WY) form in torch, O(T/C) sequential steps;
- `recon.kernels.kda_triton.kda_chunked_triton`: the same chunk form as one Triton kernel.
`gated_delta_rule` picks flash-linear-attention on CUDA when installed, then our Triton kernel on CUDA, else
the torch chunk form.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def kda_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token recurrence; returns (o [B,T,H,V], final state [B,H,K,V])."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.clone()
    out = q.new_empty(B, T, H, V)
    for t in range(T):
        S = S * g[:, t].exp()[..., None]
        kt = k[:, t]
        pred = torch.einsum("bhk,bhkv->bhv", kt, S)
        S = S + torch.einsum("bhk,bhv->bhkv", kt, beta[:, t, :, None] * (v[:, t] - pred))
        out[:, t] = scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return out, S


def kda_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None, chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk-parallel form: inside a chunk the delta-rule writes u solve a unit lower-triangular system.

    With cumulative log decays G_t inside the chunk, u_t = beta_t (v_t - (e^{G_t} k_t)^T S0 - sum_{s<t}
    k_t^T e^{G_t - G_s} k_s u_s), o_t = scale (e^{G_t} q_t)^T S0 + scale sum_{s<=t} q_t^T e^{G_t-G_s} k_s u_s and
    S_C = e^{G_C} S0 + sum_s e^{G_C - G_s} k_s u_s^T. Every exponent is <= 0, so it is stable for any decay.
    """
    B, T, H, K = k.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.clone()
    out = q.new_empty(B, T, H, V)
    # [B,H,T,*] layout for the chunk loop.
    q_, k_, v_, g_ = (x.transpose(1, 2) for x in (q, k, v, g))
    b_ = beta.transpose(1, 2)
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        C = end - start
        qc, kc, vc, bc = q_[:, :, start:end], k_[:, :, start:end], v_[:, :, start:end], b_[:, :, start:end]
        G = g_[:, :, start:end].cumsum(dim=2)  # [B,H,C,K]
        rel = G[:, :, :, None, :] - G[:, :, None, :, :]  # [B,H,t,s,K] = G_t - G_s
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        decay = torch.where(causal[..., None], rel, torch.full_like(rel, float("-inf"))).exp()
        kk = torch.einsum("bhtk,bhtsk,bhsk->bhts", kc, decay, kc)
        A = (bc[..., None] * kk).tril(-1)
        rhs = bc[..., None] * (vc - torch.einsum("bhtk,bhkv->bhtv", kc * G.exp(), S))
        eye = torch.eye(C, dtype=q.dtype, device=q.device)
        u = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
        qk = torch.einsum("bhtk,bhtsk,bhsk->bhts", qc, decay, kc)
        o = torch.einsum("bhtk,bhkv->bhtv", qc * G.exp(), S) + qk @ u
        out[:, start:end] = (scale * o).transpose(1, 2)
        G_last = G[:, :, -1:, :]  # [B,H,1,K]
        S = G_last.transpose(-1, -2).exp() * S + ((G_last - G).exp() * kc).transpose(-1, -2) @ u
    return out, S


def activate_kda_inputs(
    g_raw: torch.Tensor, beta_logit: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's gate activations: g = -exp(A_log[h]) * softplus(g_raw + dt_bias), beta = sigmoid(logit)."""
    H, K = g_raw.shape[-2:]
    g = -A_log.float().exp()[:, None] * torch.nn.functional.softplus(g_raw + dt_bias.view(H, K))
    return g.to(g_raw.dtype), beta_logit.sigmoid()


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last axis (the layer's q/k normalisation)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def select_kda_impl(device: torch.device) -> str:
    """'fla' (CUDA + flash-linear-attention), 'triton' (CUDA + triton) or 'torch'."""
    from recon.kernels._base import is_available

    if device.type == "cuda":
        if is_available("fla"):
            return "fla"
        if is_available("triton"):
            return "triton"
    return "torch"


def gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None, impl: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to the best implementation for q's device (see `select_kda_impl`); key-major state.

    Returns (o in v's dtype, final state in float32). Every path accumulates in float32, as fla's kernels do: the
    torch paths run with autocast off on float32 copies (the chunk form's triangular solve has no bf16/fp16 kernel
    on either device, and a half-precision state would drift over a long stream); the state stays float32.
    """
    impl = impl or select_kda_impl(q.device)
    state = None if initial_state is None else initial_state.float()
    if impl == "fla":
        from fla.ops.kda import chunk_kda  # type: ignore[import-not-found]

        # fla >= 0.5.2 keeps the state value-major [B,H,V,K].
        state = None if state is None else state.transpose(-1, -2).contiguous()
        o, final = chunk_kda(q, k, v, g, beta, scale=scale, initial_state=state, output_final_state=True)
        return o.to(v.dtype), final.float().transpose(-1, -2)
    if impl == "triton":
        from recon.kernels.kda_triton import kda_chunked_triton

        o, final = kda_chunked_triton(q, k, v, g, beta, scale=scale, initial_state=state)
        return o.to(v.dtype), final
    fn = kda_recurrent if impl == "recurrent" else kda_chunked
    with torch.autocast(q.device.type, enabled=False):
        o, final = fn(*(x.float() for x in (q, k, v, g, beta)), scale=scale, initial_state=state)
    return o.to(v.dtype), final
