"""Triton kernels for KV-cache pruning; plain-torch references in recon.kernels.kv_prune.

1. Diversity scores (normalise, mean, dot) in two fused passes over the candidate keys, each a grid of
   (batch*head, block of candidates) programs so a 50,000-token layer keeps the GPU busy:
   - `_normalised_sum_kernel`: L2-normalises a tile of keys in float32 and writes its column sum, one partial
     sum per tile. The partials are added by torch in a fixed order, so the mean (and therefore which tokens
     survive) does not depend on the scheduling, as it would with atomics.
   - `_score_kernel`: normalises the tile again (cheaper than storing normalised keys) and dots each row with
     the mean.
2. Gather-compaction `_compact_kernel`: one program per (batch*head, D tile) walks its rows in ascending blocks;
   row j receives row keep_idx[j] >= j. All loads of a block finish (a barrier) before any store of the block,
   and a later block only reads rows at or beyond its own destinations, which no earlier block wrote; so the
   move is safe in place, with no second copy of the cache. The anchors (`skip` leading rows) are not touched.

This module imports triton at import time; recon.kernels.kv_prune imports it only when the Triton path is
chosen, and tests set `TRITON_INTERPRET=1` (Triton's CPU interpreter) before importing it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NORM_EPS = 1e-12
BLOCK_C = 64
BLOCK_ROWS = 64


@triton.jit
def _load_key_block(k_ptr, C, H, s_b, s_h, s_c, D: tl.constexpr, BD: tl.constexpr, BC: tl.constexpr):
    """This program's block of candidate keys [BC, BD] in float32, with its (batch*head, block, rows, cols)."""
    bh = tl.program_id(0)
    blk = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = blk * BC + tl.arange(0, BC)
    cols = tl.arange(0, BD)
    mask = (rows < C)[:, None] & (cols < D)[None, :]
    ptrs = k_ptr + b * s_b + h * s_h + rows[:, None] * s_c + cols[None, :]
    k = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return k, bh, blk, rows, cols


@triton.jit
def _normalised_sum_kernel(k_ptr, part_ptr, C, H, s_b, s_h, s_c, D: tl.constexpr, BD: tl.constexpr,
                           BC: tl.constexpr, EPS: tl.constexpr):
    k, bh, blk, rows, cols = _load_key_block(k_ptr, C, H, s_b, s_h, s_c, D, BD, BC)
    norm = tl.sqrt(tl.sum(k * k, axis=1))
    k_hat = k / tl.maximum(norm, EPS)[:, None]
    part = tl.sum(k_hat, axis=0)
    nblk = tl.num_programs(1)
    tl.store(part_ptr + (bh * nblk + blk) * D + cols, part, mask=cols < D)


@triton.jit
def _score_kernel(k_ptr, mean_ptr, out_ptr, C, H, s_b, s_h, s_c, D: tl.constexpr, BD: tl.constexpr,
                  BC: tl.constexpr, EPS: tl.constexpr):
    k, bh, blk, rows, cols = _load_key_block(k_ptr, C, H, s_b, s_h, s_c, D, BD, BC)
    mu = tl.load(mean_ptr + bh * D + cols, mask=cols < D, other=0.0)
    norm = tl.sqrt(tl.sum(k * k, axis=1))
    score = tl.sum(k * mu[None, :], axis=1) / tl.maximum(norm, EPS)
    tl.store(out_ptr + bh * C + rows, score, mask=rows < C)


def diversity_scores_triton(k_cand: torch.Tensor) -> torch.Tensor:
    """float32 scores `[B,H,C]` of `k_cand [B,H,C,D]` (last dim contiguous; other strides free)."""
    B, H, C, D = k_cand.shape
    if k_cand.stride(-1) != 1:
        k_cand = k_cand.contiguous()
    out = torch.empty(B, H, C, dtype=torch.float32, device=k_cand.device)
    if C == 0:
        return out
    nblk = triton.cdiv(C, BLOCK_C)
    BD = triton.next_power_of_2(D)
    part = torch.empty(B * H, nblk, D, dtype=torch.float32, device=k_cand.device)
    s_b, s_h, s_c = k_cand.stride(0), k_cand.stride(1), k_cand.stride(2)
    grid = (B * H, nblk)
    _normalised_sum_kernel[grid](k_cand, part, C, H, s_b, s_h, s_c, D=D, BD=BD, BC=BLOCK_C, EPS=NORM_EPS)
    mean = (part.sum(dim=1) / C).contiguous()
    _score_kernel[grid](k_cand, mean, out, C, H, s_b, s_h, s_c, D=D, BD=BD, BC=BLOCK_C, EPS=NORM_EPS)
    return out


@triton.jit
def _compact_kernel(buf_ptr, idx_ptr, M, H, skip, s_b, s_h, s_r, i_b, i_h, D: tl.constexpr, BD: tl.constexpr,
                    BR: tl.constexpr):
    bh = tl.program_id(0)
    dt = tl.program_id(1)
    b = bh // H
    h = bh % H
    cols = dt * BD + tl.arange(0, BD)
    cmask = cols < D
    base = buf_ptr + b * s_b + h * s_h
    for start in range(skip, M, BR):
        rows = start + tl.arange(0, BR)
        rmask = rows < M
        src = tl.load(idx_ptr + b * i_b + h * i_h + rows, mask=rmask, other=0)
        m2 = rmask[:, None] & cmask[None, :]
        vals = tl.load(base + src[:, None] * s_r + cols[None, :], mask=m2, other=0.0)
        # Every thread has read its source rows before any thread of the block overwrites one of them.
        tl.debug_barrier()
        tl.store(base + rows[:, None] * s_r + cols[None, :], vals, mask=m2)
        tl.debug_barrier()


def compact_kv_triton_(k_buf: torch.Tensor, v_buf: torch.Tensor, keep_idx: torch.Tensor, skip: int = 0) -> None:
    """In-place compaction of both buffers `[B,H,capacity,D]` by ascending `keep_idx [B,H,m]` (see module doc)."""
    B, H, M = keep_idx.shape
    if keep_idx.stride(-1) != 1:
        keep_idx = keep_idx.contiguous()
    for buf in (k_buf, v_buf):
        if buf.stride(-1) != 1:
            raise ValueError("compact_kv_triton_: cache storage must be contiguous in the head dimension")
        D = buf.shape[-1]
        BD = min(triton.next_power_of_2(D), 128)
        grid = (B * H, triton.cdiv(D, BD))
        # num_stages=1: no software pipelining, so no load of a later block is hoisted above an earlier store
        # (harmless with this access pattern, but the in-place argument should not depend on it).
        _compact_kernel[grid](buf, keep_idx, M, H, skip, buf.stride(0), buf.stride(1), buf.stride(2),
                              keep_idx.stride(0), keep_idx.stride(1), D=D, BD=BD, BR=BLOCK_ROWS, num_stages=1)
