"""KV-cache pruning primitives (InfiniteVGGT diversity scores, kept-index selection, in-place compaction):
plain-torch references, sync-free torch fast paths, and the dispatch to the Triton kernels on CUDA.

Contracts (per batch element b and head h, the cache of one attention layer is `[B, H, N, D]`):
- `diversity_scores(k_cand [B,H,C,D]) -> [B,H,C]`: each candidate key is L2-normalised, the normalised keys
  are averaged over the C candidates (the mean is *not* re-normalised), and the score is the dot product of each
  normalised key with that mean, i.e. cos(k_i, mu) * |mu| (InfiniteVGGT, reference notes §4.1 item 4). A low
  score marks a key unlike the others: those are the ones InfiniteVGGT keeps.
- `select_kept(scores [B,H,C], keep) -> [B,H,keep]`: the candidate positions with the `keep` *lowest* scores,
  ascending (temporal order kept), per (b, h) independently.
- `compact_kv_(k_buf, v_buf, keep_idx [B,H,m], n, skip)`: rows `keep_idx[b,h,j]` of the first `n` rows of the
  storage move to rows `j`, in the same storage (no second cache). `keep_idx` must be strictly ascending per
  (b, h), so every source row is at or after its destination, which is what makes an ordered in-place walk
  safe; the first `skip` rows are known to stay where they are (the anchors) and are not touched.

Implementations: `*_reference` are the readable definitions (tests compare everything against them);
`diversity_scores` / `select_kept` / `compact_kv_` are what the cache policy calls. They never read a value back
to the host (no `.item()`, no `nonzero`), so a policy can run them once per layer per frame without a
host-device synchronisation. On CUDA with Triton installed, scores and compaction run the kernels of
`recon.kernels.kv_prune_triton` (imported lazily: importing this module never imports triton or touches CUDA);
elsewhere the torch paths run.

Precision: the torch path computes the scores in the keys' dtype when that is float32/float64 (the float64
golden fixture needs float64 scores) and in float32 for half-precision keys; the Triton path always
accumulates in float32 and returns float32 scores.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

IMPLS = ("torch", "triton")

# F.normalize's default: a zero key scores 0 instead of NaN.
NORM_EPS = 1e-12


_forced_impl: str | None = None


@contextmanager
def prune_impl(name: str | None) -> Iterator[None]:
    """Force "torch" or "triton" for every pruning call inside the block (restores the previous choice after).

    For tests and benchmarks: e.g. the Triton kernels on CPU tensors under `TRITON_INTERPRET=1`.
    """
    global _forced_impl
    if name is not None and name not in IMPLS:
        raise ValueError(f"prune impl must be one of {IMPLS} or None, got {name!r}")
    previous, _forced_impl = _forced_impl, name
    try:
        yield
    finally:
        _forced_impl = previous


def select_prune_impl(device: torch.device) -> str:
    """'triton' on CUDA when triton is installed, else 'torch' (CPU, MPS, or no triton); `prune_impl` overrides."""
    from recon.kernels._base import is_available

    if _forced_impl is not None:
        return _forced_impl
    if device.type == "cuda" and is_available("triton"):
        return "triton"
    return "torch"


def _score_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def diversity_scores_reference(k_cand: torch.Tensor) -> torch.Tensor:
    """Scores `[B,H,C]` by the definition: normalise, mean over candidates, dot with the mean."""
    k = k_cand.to(_score_dtype(k_cand.dtype))
    k_hat = F.normalize(k, dim=-1, eps=NORM_EPS)
    mu = k_hat.mean(dim=2, keepdim=True)
    return (k_hat * mu).sum(dim=-1)


def diversity_scores(k_cand: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """Scores `[B,H,C]` of the candidate keys `k_cand [B,H,C,D]` (any strides, e.g. a view of the cache)."""
    impl = impl or select_prune_impl(k_cand.device)
    if impl == "triton":
        from recon.kernels.kv_prune_triton import diversity_scores_triton

        return diversity_scores_triton(k_cand)
    return diversity_scores_reference(k_cand)


def diversity_scores_masked(k_cand: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`diversity_scores` over the rows where `valid [C]` is True, with static shapes: the mean direction averages
    the valid rows only, and invalid rows score +inf (never among the kept lowest). For `StaticKVCache` storage,
    whose tail rows are not entries; the torch path only (the scores feed a sort, not a kernel-sized hot loop)."""
    k_hat = F.normalize(k_cand.to(_score_dtype(k_cand.dtype)), dim=-1, eps=NORM_EPS) * valid[:, None]
    mu = k_hat.sum(dim=2, keepdim=True) / valid.sum().clamp(min=1)
    scores = (k_hat * mu).sum(dim=-1)
    return torch.where(valid, scores, torch.full_like(scores, float("inf")))


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """`[..., C]` int64: each entry's position in ascending order of `scores` (ties: lower index first)."""
    order = scores.argsort(dim=-1, stable=True)
    steps = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, steps)


def select_kept_reference(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions `[B,H,keep]` of the `keep` lowest scores, ascending: top-k of the negated scores, then sorted."""
    idx = torch.topk(-scores, keep, dim=-1, sorted=False).indices
    return idx.sort(dim=-1).values


def select_kept(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Same result as `select_kept_reference` (without ties at the cut), in O(C) after one top-k.

    Steady-state pruning evicts about one frame of tokens from tens of thousands, so we take the top-k of the
    few *evicted* (highest) scores, mark them in a mask, and place each surviving position at its rank among the
    survivors (a cumulative sum) with one scatter: no sort of the whole cache, and no `nonzero`, whose output
    size would need a host synchronisation.
    """
    B, H, C = scores.shape
    evict = C - keep
    if evict <= 0:
        return torch.arange(C, device=scores.device).expand(B, H, C).clone()
    if keep <= 0:
        return torch.empty(B, H, 0, dtype=torch.long, device=scores.device)
    if evict > keep:  # mostly evicting: a direct top-k of the survivors is cheaper
        return select_kept_reference(scores, keep)
    evicted = torch.topk(scores, evict, dim=-1, sorted=False).indices
    alive = torch.ones(B, H, C, dtype=torch.bool, device=scores.device)
    alive.scatter_(-1, evicted, False)
    rank = alive.cumsum(-1) - 1
    # Evicted positions are sent to a spare slot `keep`, dropped afterwards.
    target = torch.where(alive, rank, torch.full_like(rank, keep))
    out = torch.empty(B, H, keep + 1, dtype=torch.long, device=scores.device)
    out.scatter_(-1, target, torch.arange(C, device=scores.device).expand(B, H, C))
    return out[..., :keep]


def compact_reference(k: torch.Tensor, v: torch.Tensor, keep_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-place gather: `(k[b,h,keep_idx[b,h,j]], v[...])`, the definition the in-place paths must equal."""
    kk = torch.gather(k, 2, keep_idx.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1]))
    vv = torch.gather(v, 2, keep_idx.unsqueeze(-1).expand(-1, -1, -1, v.shape[-1]))
    return kk, vv


def compact_kv_(k_buf: torch.Tensor, v_buf: torch.Tensor, keep_idx: torch.Tensor, n: int, skip: int = 0,
                impl: str | None = None) -> None:
    """Move rows `keep_idx` of `k_buf/v_buf[:, :, :n]` to rows `0..m-1` of the same buffers, in place.

    Args:
        k_buf, v_buf: cache storage `[B,H,capacity,D]` (only the first `n` rows are meaningful).
        keep_idx: `[B,H,m]` int64, strictly ascending per (b, h), values < n.
        n: rows in use before compaction.
        skip: leading rows with `keep_idx[..., j] == j` (anchors) that need no move.
        impl: "torch" or "triton" (default: `select_prune_impl`).
    """
    m = keep_idx.shape[-1]
    if m <= skip:
        return
    impl = impl or select_prune_impl(k_buf.device)
    if impl == "triton":
        from recon.kernels.kv_prune_triton import compact_kv_triton_

        compact_kv_triton_(k_buf, v_buf, keep_idx, skip)
        return
    # torch: gather the moving rows into a temporary, then write them back (the temporary is freed at once).
    idx = keep_idx[..., skip:]
    for buf in (k_buf, v_buf):
        src = buf[:, :, :n]
        moved = torch.gather(src, 2, idx.unsqueeze(-1).expand(-1, -1, -1, buf.shape[-1]))
        buf[:, :, skip:m].copy_(moved)
