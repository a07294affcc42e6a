"""KV pruning primitives: the torch fast paths against the references, and the Triton kernels (CPU interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from recon.kernels.kv_prune import (
    compact_kv_,
    compact_reference,
    diversity_scores,
    diversity_scores_reference,
    prune_impl,
    select_kept,
    select_kept_reference,
    select_prune_impl,
)


def random_cache(B: int, H: int, cap: int, D: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, cap, D, generator=gen) + 0.7 * torch.randn(1, H, 1, D, generator=gen)).to(dtype)


def random_keep(B: int, H: int, n: int, skip: int, m: int, seed: int) -> torch.Tensor:
    """Strictly ascending positions per (b, h): 0..skip-1, then m-skip distinct positions in [skip, n)."""
    gen = torch.Generator().manual_seed(seed)
    tails = [torch.randperm(n - skip, generator=gen)[:m - skip].sort().values + skip for _ in range(B * H)]
    tail = torch.stack(tails).view(B, H, m - skip)
    return torch.cat([torch.arange(skip).expand(B, H, skip), tail], dim=-1)


def test_scores_are_cosine_to_the_mean_direction_and_ignore_key_length() -> None:
    k = random_cache(2, 3, 40, 16, seed=0, dtype=torch.float64)
    s = diversity_scores_reference(k)
    k_hat = k / k.norm(dim=-1, keepdim=True)
    mu = k_hat.mean(dim=2, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(k_hat, mu.expand_as(k_hat), dim=-1)
    torch.testing.assert_close(s, cos * mu.norm(dim=-1), atol=1e-12, rtol=0)
    # The mean score of a head is |mu|^2 (used as the layer's diversity summary).
    torch.testing.assert_close(s.mean(-1), mu.squeeze(2).pow(2).sum(-1), atol=1e-12, rtol=0)
    scaled = k * torch.rand(2, 3, 40, 1, dtype=torch.float64).add(0.1) * 9
    torch.testing.assert_close(diversity_scores_reference(scaled), s, atol=1e-12, rtol=0)
    assert s.dtype == torch.float64
    assert diversity_scores_reference(k.to(torch.bfloat16)).dtype == torch.float32


def test_zero_key_scores_zero_not_nan() -> None:
    k = random_cache(1, 1, 5, 8, seed=1)
    k[0, 0, 2] = 0
    s = diversity_scores(k)
    assert torch.isfinite(s).all() and s[0, 0, 2] == 0


@pytest.mark.parametrize(("C", "keep"), [(100, 75), (60, 59), (60, 1), (30, 30), (30, 0), (500, 120)])
def test_select_kept_equals_reference(C: int, keep: int) -> None:
    scores = diversity_scores(random_cache(2, 3, C, 8, seed=C + keep))
    got = select_kept(scores, keep)
    assert got.shape == (2, 3, keep)
    ref = select_kept_reference(scores, keep) if keep < C else torch.arange(C).expand(2, 3, C)
    assert torch.equal(got, ref)
    if 0 < keep < C:
        assert bool((got[..., 1:] > got[..., :-1]).all())  # temporal order
        kept = torch.gather(scores, -1, got)
        evicted = scores.clone().scatter_(-1, got, float("-inf"))
        assert bool((kept.amax(-1) <= evicted.amax(-1)).all())  # lowest scores kept


@pytest.mark.parametrize(("n", "skip", "m"), [(90, 25, 60), (90, 0, 45), (200, 17, 199), (40, 40, 40)])
def test_compact_in_place_equals_out_of_place_gather(n: int, skip: int, m: int) -> None:
    k_buf, v_buf = random_cache(2, 3, 256, 12, seed=n), random_cache(2, 3, 256, 10, seed=n + 1)
    keep = random_keep(2, 3, n, skip, m, seed=m)
    want_k, want_v = compact_reference(k_buf[:, :, :n], v_buf[:, :, :n], keep)
    tail_before = k_buf[:, :, n:].clone()
    ptr = k_buf.data_ptr()
    compact_kv_(k_buf, v_buf, keep, n, skip=skip, impl="torch")
    assert k_buf.data_ptr() == ptr
    assert torch.equal(k_buf[:, :, :m], want_k) and torch.equal(v_buf[:, :, :m], want_v)
    assert torch.equal(k_buf[:, :, n:], tail_before)  # nothing beyond the used rows is written


def test_cpu_dispatch_is_torch_and_the_override_restores() -> None:
    assert select_prune_impl(torch.device("cpu")) == "torch"
    with prune_impl("triton"):
        assert select_prune_impl(torch.device("cpu")) == "triton"
        with prune_impl("torch"):
            assert select_prune_impl(torch.device("cpu")) == "torch"
        assert select_prune_impl(torch.device("cpu")) == "triton"
    assert select_prune_impl(torch.device("cpu")) == "torch"
    with pytest.raises(ValueError), prune_impl("cuda"):
        pass


TRITON_CHECK = textwrap.dedent("""
    import torch
    from recon.kernels.kv_prune import compact_reference, diversity_scores, diversity_scores_reference
    from recon.kernels.kv_prune_triton import compact_kv_triton_, diversity_scores_triton
    from tests.kernels.test_kv_prune import random_cache, random_keep
    worst = 0.0
    for (B, H, cap, D, a, n, dtype) in [(1, 2, 300, 16, 25, 260, torch.float32), (2, 3, 200, 20, 0, 131, torch.float64),
                                        (1, 4, 150, 64, 7, 150, torch.bfloat16), (1, 1, 10, 8, 3, 4, torch.float32)]:
        buf = random_cache(B, H, cap, D, seed=D, dtype=dtype)
        cand = buf[:, :, a:n]                       # a strided view of cache storage, as the policy passes it
        got = diversity_scores(cand, impl="triton")
        ref = diversity_scores_reference(cand.float())
        assert got.dtype == torch.float32 and got.shape == (B, H, n - a)
        torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)
        worst = max(worst, (got - ref).abs().max().item())
    for (B, H, D, n, skip, m, dtype) in [(1, 2, 16, 300, 25, 240, torch.float32), (2, 3, 20, 131, 0, 64, torch.float64),
                                         (1, 2, 200, 90, 5, 89, torch.bfloat16), (1, 1, 8, 70, 10, 10, torch.float32)]:
        k_buf = random_cache(B, H, n + 13, D, seed=n, dtype=dtype)
        v_buf = random_cache(B, H, n + 13, D + 3, seed=n + 1, dtype=dtype)
        keep = random_keep(B, H, n, skip, m, seed=m)
        want_k, want_v = compact_reference(k_buf[:, :, :n], v_buf[:, :, :n], keep)
        compact_kv_triton_(k_buf, v_buf, keep, skip)
        assert torch.equal(k_buf[:, :, :m], want_k) and torch.equal(v_buf[:, :, :m], want_v)
    print("max abs diff", worst)
""")


def test_triton_kernels_match_references_in_interpreter() -> None:
    import triton  # noqa: F401 - dev extra; missing, the interpreter check below could not run at all
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300,
                          cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max abs diff" in proc.stdout


FIXTURE_CHECK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from recon.kernels.kv_prune import prune_impl
    from tests.golden.runners.infinitevggt import infinitevggt_stream_outputs
    from tests.golden.runners.vggt_family import build_model
    from tests.golden.util import load_tensors
    torch.set_num_threads(1)
    folder = Path(sys.argv[1])
    cfg = json.loads((folder / "config.json").read_text())
    model = build_model(folder, cfg, torch.float32)
    images = load_tensors(folder / "inputs.safetensors")["images"]
    want = load_tensors(folder / "outputs.safetensors")
    with prune_impl("triton"):
        got = infinitevggt_stream_outputs(model, images, cfg["run"]["total_budget"])
    index_keys = [k for k in want if k.endswith(("kept_cache_pos", "kept_token_id")) or k.startswith("cache_token_id")]
    assert len(index_keys) > 40
    for key in index_keys + ["budget", "cache_len_after"]:
        assert torch.equal(got[key], want[key]), key
    for key in ("depth", "pts3d_in_other_view", "camera_pose"):
        torch.testing.assert_close(got[key].double(), want[key], atol=1e-4, rtol=1e-4)
    print("fixture ok", len(index_keys))
""")


def test_pruning_fixture_with_the_triton_kernels_in_interpreter() -> None:
    """The golden pruning run with scores and compaction on the Triton kernels: the same kept tokens, every frame."""
    import triton  # noqa: F401 - dev extra; missing, the interpreter check below could not run at all

    from tests.conftest import require_golden

    folder = require_golden("infinitevggt_tiny_pruned")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", FIXTURE_CHECK, str(folder)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fixture ok" in proc.stdout
