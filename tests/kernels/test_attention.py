"""Attention dispatch: the choice rules (CPU, and CUDA rules with the packages faked) and the maths on CPU."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from recon.errors import ConfigError, MissingDependencyError
from recon.kernels import attention as attn


def _qkv(dtype: torch.dtype, b: int = 2, h: int = 3, n: int = 7, m: int = 11, d: int = 16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, h, n, d, generator=g, dtype=dtype), torch.randn(b, h, m, d, generator=g, dtype=dtype),
            torch.randn(b, h, m, d, generator=g, dtype=dtype))


def _explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(QK^T/sqrt(d))V written out with exp and sums, independent of the module under test."""
    logits = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(q.shape[-1])
    if keep is not None:
        logits = torch.where(keep, logits, torch.full_like(logits, -1e300 if q.dtype == torch.float64 else -1e30))
    e = torch.exp(logits - logits.amax(-1, keepdim=True))
    if keep is not None:
        e = e * keep
    return torch.einsum("bhnm,bhmd->bhnd", e / e.sum(-1, keepdim=True), v)


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(attn.ENV_VAR, raising=False)


def test_cpu_chooses_sdpa_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    attn._logged.clear()
    with caplog.at_level(logging.INFO, logger=attn.__name__):
        first = attn.select_attention("cpu", torch.float32, need_mask=True)
        second = attn.select_attention(torch.device("cpu"), torch.float32, need_mask=True)
    assert first.name == second.name == "sdpa" and first.supports_mask
    assert len([r for r in caplog.records if "attention on cpu" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("installed", "dtype", "need_mask", "expected"),
    [
        ({"flash_attn", "xformers"}, torch.bfloat16, False, "flash_attn"),
        ({"flash_attn", "xformers"}, torch.bfloat16, True, "xformers"),  # flash cannot mask
        ({"flash_attn", "xformers"}, torch.float32, False, "xformers"),  # flash needs half precision
        ({"flash_attn"}, torch.float32, False, "sdpa"),
        ({"xformers"}, torch.float16, False, "xformers"),
        (set(), torch.bfloat16, True, "sdpa"),
    ],
)
def test_cuda_rules_with_faked_packages(monkeypatch: pytest.MonkeyPatch, installed: set[str], dtype: torch.dtype,
                                        need_mask: bool, expected: str) -> None:
    # Selection looks only at the device type and installed packages, so the CUDA rules run on a CPU-only machine.
    monkeypatch.setattr(attn, "_installed", lambda module: module.split(".")[0] in installed)
    monkeypatch.setattr(attn, "_importable", lambda module: module.split(".")[0] in installed)
    impl = attn.select_attention("cuda", dtype, need_mask=need_mask)
    assert impl.name == expected
    assert impl.supports_mask == (expected != "flash_attn")


def test_forced_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert attn.select_attention("cpu", torch.float32, prefer="sdpa").name == "sdpa"
    with pytest.raises(ConfigError, match="unknown attention"):
        attn.select_attention("cpu", torch.float32, prefer="magic")
    monkeypatch.setattr(attn, "_installed", lambda module: False)
    with pytest.raises(MissingDependencyError, match="xformers"):
        attn.select_attention("cuda", torch.float16, prefer="xformers")
    monkeypatch.setattr(attn, "_installed", lambda module: True)
    with pytest.raises(ConfigError, match="only on CUDA"):
        attn.select_attention("cpu", torch.float16, prefer="flash_attn")
    with pytest.raises(ConfigError, match="cannot apply a mask"):
        attn.select_attention("cuda", torch.float16, need_mask=True, prefer="flash_attn")
    monkeypatch.setenv(attn.ENV_VAR, "magic")
    with pytest.raises(ConfigError, match="RECON_ATTENTION"):
        attn.select_attention("cpu", torch.float32)


def test_maskless_impl_refuses_a_mask() -> None:
    flash = attn.AttentionImpl("flash_attn", False, "test", attn._sdpa)
    q, k, v = _qkv(torch.float32)
    with pytest.raises(ConfigError, match="takes no mask"):
        flash(q, k, v, torch.ones(7, 11, dtype=torch.bool))


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_maths_without_and_with_masks(dtype: torch.dtype, tol: float) -> None:
    q, k, v = _qkv(dtype)
    impl = attn.select_attention("cpu", dtype, need_mask=True)
    for fn in (lambda *a, **kw: attn.attention(*a, impl=impl, **kw), attn.reference_attention):
        torch.testing.assert_close(fn(q, k, v), _explicit(q, k, v), atol=tol, rtol=tol)
        # Block-causal pattern like StreamVGGT's batch mask: query i sees keys up to its block; every row keeps one.
        keep = (torch.arange(11)[None, :] // 4) <= (torch.arange(7)[:, None] // 3)
        torch.testing.assert_close(fn(q, k, v, attn_mask=keep), _explicit(q, k, v, keep), atol=tol, rtol=tol)
        # A per-batch, per-head bool mask broadcast from [B,1,N,M].
        keep_b = torch.rand(2, 1, 7, 11, generator=torch.Generator().manual_seed(1)) > 0.3
        keep_b[..., 0] = True
        torch.testing.assert_close(fn(q, k, v, attn_mask=keep_b), _explicit(q, k, v, keep_b), atol=tol, rtol=tol)
        # An additive float mask equals the bool mask written as 0 / -inf.
        additive = torch.zeros(7, 11, dtype=dtype).masked_fill(~keep, float("-inf"))
        torch.testing.assert_close(fn(q, k, v, attn_mask=additive), _explicit(q, k, v, keep), atol=tol, rtol=tol)
    out = attn.attention(q, k, v, scale=0.5)
    torch.testing.assert_close(out, attn.reference_attention(q, k, v, scale=0.5), atol=tol, rtol=tol)


def test_xformers_bias_layout() -> None:
    q, _, _ = _qkv(torch.float32)
    keep = (torch.arange(11)[None, :] // 4) <= (torch.arange(7)[:, None] // 3)
    bias = attn._additive_bias(keep, q, 11)
    assert bias.shape == (2, 3, 7, 11) and bias.stride(-2) % 8 == 0 and bias.dtype == q.dtype
    assert torch.equal(torch.isinf(bias), (~keep).expand(2, 3, 7, 11)) and torch.all(bias[keep.expand_as(bias)] == 0)


def test_varlen_attention_attends_each_element_to_its_own_keys() -> None:
    """The stream batch's attention: element i sees only keys[i] (lengths differ, one with a key mask)."""
    from recon.kernels.attention import reference_attention, varlen_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 5, 8, generator=g)
    lengths = (7, 1, 12)
    keys = [torch.randn(1, 2, m, 8, generator=g) for m in lengths]
    values = [torch.randn(1, 2, m, 8, generator=g) for m in lengths]
    mask = torch.ones(12, dtype=torch.bool)
    mask[3:6] = False  # a static cache's invalid rows
    mask = mask.view(1, 1, 1, 12)
    masks = [None, None, mask]
    out = varlen_attention(q, keys, values, masks)
    for i in range(3):
        ref = reference_attention(q[i:i + 1], keys[i], values[i], attn_mask=masks[i])
        torch.testing.assert_close(out[i:i + 1], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        varlen_attention(q, keys[:2], values[:2])
