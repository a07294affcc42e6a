"""Chunked gated delta rule (KDA) as one Triton kernel; plain-torch reference: recon.kernels.kda.kda_chunked.

One program per (batch, head) walks the sequence in chunks of 16 tokens, keeping the [K,V] state in registers.
Inside a chunk the pairwise decays exp(G_t - G_s) (all exponents <= 0) give the strictly lower-triangular A
of the delta-rule writes, and (I + A)^-1 = (I - A)(I + A^2)(I + A^4)(I + A^8) since A^16 = 0: four small
matrix products instead of a sequential triangular solve. Dot products request IEEE fp32 (no TF32) so results
agree with the torch reference to ~1e-6.

This module imports triton at import time; recon.kernels.kda imports it only when the Triton path is chosen,
and tests set `TRITON_INTERPRET=1` (Triton's CPU interpreter) before importing it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 16


@triton.jit
def _kda_chunk_kernel(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, s0_ptr, o_ptr, s_out_ptr, T, H, scale,
                      K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                      HAS_S0: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    offs_c = tl.arange(0, C)
    mk = offs_k < K
    mv = offs_v < V
    state_off = (b * H + h) * K * V + offs_k[:, None] * V + offs_v[None, :]
    state_mask = mk[:, None] & mv[None, :]
    if HAS_S0:
        S = tl.load(s0_ptr + state_off, mask=state_mask, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    eye = tl.where(offs_c[:, None] == offs_c[None, :], 1.0, 0.0)
    lower = offs_c[:, None] > offs_c[None, :]
    causal = offs_c[:, None] >= offs_c[None, :]
    for start in range(0, T, C):
        t = start + offs_c
        mt = t < T
        row = (b * T + t) * H + h
        m_k = mt[:, None] & mk[None, :]
        q = tl.load(q_ptr + row[:, None] * K + offs_k[None, :], mask=m_k, other=0.0).to(tl.float32)
        kk = tl.load(k_ptr + row[:, None] * K + offs_k[None, :], mask=m_k, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + row[:, None] * K + offs_k[None, :], mask=m_k, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + row[:, None] * V + offs_v[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        v = v.to(tl.float32)
        beta = tl.load(beta_ptr + row, mask=mt, other=0.0).to(tl.float32)
        G = tl.cumsum(g, axis=0)
        rel = tl.where(causal[:, :, None], G[:, None, :] - G[None, :, :], float("-inf"))
        decay = tl.exp(rel)
        kk_ts = tl.sum(kk[:, None, :] * decay * kk[None, :, :], axis=2)
        qk_ts = tl.sum(q[:, None, :] * decay * kk[None, :, :], axis=2)
        A = tl.where(lower, beta[:, None] * kk_ts, 0.0)
        eG = tl.exp(G)
        rhs = beta[:, None] * (v - tl.dot(kk * eG, S, input_precision="ieee"))
        A2 = tl.dot(A, A, input_precision="ieee")
        A4 = tl.dot(A2, A2, input_precision="ieee")
        A8 = tl.dot(A4, A4, input_precision="ieee")
        inv = tl.dot(eye - A, eye + A2, input_precision="ieee")
        inv = tl.dot(inv, eye + A4, input_precision="ieee")
        inv = tl.dot(inv, eye + A8, input_precision="ieee")
        U = tl.dot(inv, rhs, input_precision="ieee")
        o = scale * (tl.dot(q * eG, S, input_precision="ieee") + tl.dot(qk_ts, U, input_precision="ieee"))
        tl.store(o_ptr + row[:, None] * V + offs_v[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=mt[:, None] & mv[None, :])
        G_last = tl.sum(tl.where(offs_c[:, None] == C - 1, G, 0.0), axis=0)
        k_dec = kk * tl.exp(G_last[None, :] - G)
        S = tl.exp(G_last)[:, None] * S + tl.dot(tl.trans(k_dec), U, input_precision="ieee")
    tl.store(s_out_ptr + state_off, S, mask=state_mask)


def kda_chunked_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as recon.kernels.kda.kda_chunked (key-major state), computed by the Triton kernel; o in q's
    dtype, the final state in float32 (the kernel's accumulator)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device)
    s_out = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device)
    s0 = initial_state.float().contiguous() if initial_state is not None else s_out
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, triton.next_power_of_2(V))
    _kda_chunk_kernel[(B * H,)](q, k, v, g, beta, s0, o, s_out, T, H, float(scale), K=K, V=V, BK=BK, BV=BV, C=CHUNK,
                     HAS_S0=initial_state is not None)
    return o, s_out
