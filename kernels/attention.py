"""The one attention dispatch of recon: PyTorch SDPA everywhere, xformers or FlashAttention on CUDA when installed.

Why one dispatch: the research code each model derives from hard-wires its own `XFORMERS_AVAILABLE` flag per layer
file, so which kernel runs (and whether a mask silently disables it) differs from block to block. Here a model asks
once, at construction or on its first forward, `select_attention(device, dtype, need_mask)`, keeps the returned
`AttentionImpl`, and every attention call goes through it. The choice is logged once per distinct situation.

Layout everywhere: q [B,H,N,D], k and v [B,H,M,D] (SDPA's). Masks follow SDPA's meaning: a bool mask is True where
a query may attend; a float mask is added to the logits. Both broadcast to [B,H,N,M].

Choice rules (first match wins):
1. `prefer` (or `$RECON_ATTENTION`) names an implementation: use it, or raise if it cannot run here.
2. Not CUDA: SDPA (PyTorch picks its own CPU kernel; there is nothing faster to dispatch to).
3. CUDA, no mask, fp16/bf16, `flash_attn` installed: FlashAttention (it supports neither arbitrary masks nor fp32).
4. CUDA, `xformers` installed: memory-efficient attention (fp32 too, and additive masks).
5. Otherwise SDPA, which on CUDA itself picks flash / memory-efficient / math kernels.

This module imports only torch at import time; xformers and flash_attn are imported when first selected, so
`import recon` never touches CUDA or those packages.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon.errors import ConfigError, MissingDependencyError

logger = logging.getLogger(__name__)

ENV_VAR = "RECON_ATTENTION"
"""Environment override of the automatic choice (sdpa, xformers, flash_attn); read only in `select_attention`."""

IMPLEMENTATIONS = ("sdpa", "xformers", "flash_attn")

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float | None], torch.Tensor]


@dataclass(frozen=True)
class AttentionImpl:
    """A chosen attention kernel.

    Attributes:
        name: "sdpa", "xformers" or "flash_attn".
        supports_mask: False for FlashAttention (callers must not pass a mask to it).
        reason: why it was chosen, for the log line and for error messages.
        fn: the kernel, called as fn(q, k, v, attn_mask, scale) with [B,H,N,D] tensors.
    """

    name: str
    supports_mask: bool
    reason: str
    fn: AttentionFn

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                 scale: float | None = None) -> torch.Tensor:
        if attn_mask is not None and not self.supports_mask:
            raise ConfigError(f"attention implementation {self.name!r} takes no mask; select with need_mask=True")
        return self.fn(q, k, v, attn_mask, scale)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
          scale: float | None) -> torch.Tensor:
    """PyTorch scaled_dot_product_attention; a bool mask row with no True would give NaN, as in every kernel."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def _additive_bias(attn_mask: torch.Tensor, q: torch.Tensor, m: int) -> torch.Tensor:
    """[B,H,N,M] float bias in q's dtype for xformers, in storage whose last stride is a multiple of 8.

    xformers' kernels read the bias with vector loads and reject a bias whose rows are not 8-aligned, so the
    tensor is a view into a wider buffer rather than a plain expand.
    """
    b, h, n, _ = q.shape
    if attn_mask.dtype == torch.bool:
        bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~attn_mask, float("-inf"))
    else:
        bias = attn_mask.to(q.dtype)
    aligned = (m + 7) // 8 * 8
    storage = torch.empty(b, h, n, aligned, dtype=q.dtype, device=q.device)
    out = storage[..., :m]
    out.copy_(bias.expand(b, h, n, m))
    return out


def _xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
              scale: float | None) -> torch.Tensor:
    """xformers memory_efficient_attention; it wants [B,N,H,D], so transpose in and out (views, no copies)."""
    xops = importlib.import_module("xformers.ops")
    bias = None if attn_mask is None else _additive_bias(attn_mask, q, k.shape[-2])
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_bias=bias, scale=scale)
    return out.transpose(1, 2)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
           scale: float | None) -> torch.Tensor:
    """FlashAttention 2 `flash_attn_func` ([B,N,H,D], fp16/bf16, no mask)."""
    flash_attn = importlib.import_module("flash_attn")
    out = flash_attn.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                     dropout_p=0.0, softmax_scale=scale, causal=False)
    return out.transpose(1, 2)


_FUNCTIONS: dict[str, tuple[AttentionFn, bool, str]] = {
    # name -> (kernel, supports_mask, module that must be installed)
    "sdpa": (_sdpa, True, "torch"),
    "xformers": (_xformers, True, "xformers"),
    "flash_attn": (_flash, False, "flash_attn"),
}


def _installed(module: str) -> bool:
    """True when `module` can be found without importing it (importing flash_attn on a CPU box can fail loudly)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _importable(module: str) -> bool:
    """True when `module` really imports (a wheel built for another CUDA/torch is found but fails here)."""
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - broken GPU wheels raise anything from ImportError to RuntimeError
        logger.debug("%s is installed but cannot be imported here: %s", module, e)
        return False
    return True


def _make(name: str, reason: str) -> AttentionImpl:
    fn, supports_mask, _ = _FUNCTIONS[name]
    return AttentionImpl(name=name, supports_mask=supports_mask, reason=reason, fn=fn)


_logged: set[tuple[str, str, bool, str]] = set()
_logged_lock = threading.Lock()


def _log_once(device: torch.device, dtype: torch.dtype, need_mask: bool, impl: AttentionImpl) -> None:
    """One INFO line per distinct (device type, dtype, mask need, choice): models call select per block."""
    key = (device.type, str(dtype), need_mask, impl.name)
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    logger.info("attention on %s/%s (mask %s): %s (%s)", device.type, str(dtype).removeprefix("torch."),
                "needed" if need_mask else "not needed", impl.name, impl.reason)


def select_attention(device: torch.device | str, dtype: torch.dtype, need_mask: bool = False,
                     prefer: str | None = None) -> AttentionImpl:
    """Choose the attention kernel for a model running on `device` in `dtype`.

    Args:
        device: where the model runs; only its type matters ("cuda" enables xformers/FlashAttention).
        dtype: compute dtype of q/k/v; FlashAttention needs fp16 or bf16.
        need_mask: whether any call will pass a mask (block-causal StreamVGGT batches do; KV-cached steps do not).
        prefer: force "sdpa", "xformers" or "flash_attn" (default: `$RECON_ATTENTION`, else automatic).

    Raises:
        ConfigError: `prefer` is unknown, or cannot run on this device/dtype/mask.
        MissingDependencyError: `prefer` names a package that is not installed.
    """
    device = torch.device(device)
    prefer = prefer or os.environ.get(ENV_VAR) or None
    if prefer is not None:
        impl = _forced(prefer, device, dtype, need_mask)
    elif device.type != "cuda":
        impl = _make("sdpa", f"{device.type} device")
    elif not need_mask and dtype in (torch.float16, torch.bfloat16) and _installed("flash_attn") \
            and _importable("flash_attn"):
        impl = _make("flash_attn", "CUDA, half precision, no mask, flash_attn installed")
    elif _installed("xformers") and _importable("xformers.ops"):
        impl = _make("xformers", "CUDA, xformers installed" + (" (mask as additive bias)" if need_mask else ""))
    else:
        impl = _make("sdpa", "CUDA without xformers/flash_attn for this case; SDPA picks its own fused kernel")
    _log_once(device, dtype, need_mask, impl)
    return impl


def _forced(name: str, device: torch.device, dtype: torch.dtype, need_mask: bool) -> AttentionImpl:
    """The implementation named by `prefer`/$RECON_ATTENTION, refused when it cannot serve this case."""
    if name not in _FUNCTIONS:
        raise ConfigError(f"unknown attention implementation {name!r} (from prefer= or ${ENV_VAR}); "
                          f"choose one of {', '.join(IMPLEMENTATIONS)}")
    if name == "sdpa":
        return _make(name, "requested")
    module = _FUNCTIONS[name][2]
    if not _installed(module):
        raise MissingDependencyError(f"attention {name!r} was requested but {module} is not installed; "
                                     f"install it with: pip install 'recon[gpu]'")
    if device.type != "cuda":
        raise ConfigError(f"attention {name!r} runs only on CUDA, not on {device.type}")
    if name == "flash_attn" and need_mask:
        raise ConfigError("attention 'flash_attn' cannot apply a mask; use xformers or sdpa for masked attention")
    if name == "flash_attn" and dtype not in (torch.float16, torch.bfloat16):
        raise ConfigError(f"attention 'flash_attn' needs float16 or bfloat16, not {dtype}")
    return _make(name, "requested")


_DEFAULT = _make("sdpa", "default")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              impl: AttentionImpl | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for q [B,H,N,D], k/v [B,H,M,D]; scale defaults to 1/sqrt(D).

    `impl` comes from `select_attention` (chosen once per model); without it SDPA runs, which is correct
    everywhere, so a caller that never selects still gets the right numbers.
    """
    return (impl or _DEFAULT)(q, k, v, attn_mask, scale)


def varlen_attention(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
                     masks: list[torch.Tensor | None] | None = None, impl: AttentionImpl | None = None,
                     impl_masked: AttentionImpl | None = None, scale: float | None = None) -> torch.Tensor:
    """Batch element i of `q [B,H,N,D]` attends to its own `keys[i]`/`values[i]` (`[1,H,M_i,D]`, lengths differ).

    Why: a batched streaming step (recon.models.batched) runs many sessions' frames in one call, but each session
    attends only to its own KV cache. On CUDA with xformers and no key masks, one block-diagonal kernel call
    covers every session; otherwise (CPU, masks of static caches, no xformers) one kernel call per element, which
    on a CPU costs nothing over a fused call (the work is the same GEMMs). Results equal per-element `attention`
    (`impl` for unmasked elements, `impl_masked` for masked ones, as a model's unbatched calls choose).
    """
    B = q.shape[0]
    if len(keys) != B or len(values) != B:
        raise ValueError(f"varlen_attention: {B} queries but {len(keys)} keys / {len(values)} values")
    masks = masks if masks is not None else [None] * B
    if q.is_cuda and all(m is None for m in masks) and impl is not None and impl.name == "xformers":
        return _xformers_varlen(q, keys, values, scale)
    outs = [attention(q[i:i + 1], keys[i], values[i], attn_mask=masks[i],
                      impl=impl if masks[i] is None else impl_masked, scale=scale) for i in range(B)]
    return torch.cat(outs, dim=0)


def _xformers_varlen(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
                     scale: float | None) -> torch.Tensor:
    """One xformers call with a block-diagonal mask: queries of element i see only keys[i] ([1,sum,H,D] layout)."""
    fmha = importlib.import_module("xformers.ops.fmha")
    B, H, N, D = q.shape
    bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(q_seqlen=[N] * B, kv_seqlen=[int(k.shape[2]) for k in keys])
    qf = q.transpose(1, 2).reshape(1, B * N, H, D)
    kf = torch.cat([k[0].transpose(0, 1) for k in keys]).unsqueeze(0)
    vf = torch.cat([v[0].transpose(0, 1) for v in values]).unsqueeze(0)
    out = fmha.memory_efficient_attention(qf, kf, vf, attn_bias=bias, scale=scale)
    return out.reshape(B, N, H, -1).transpose(1, 2)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                        scale: float | None = None) -> torch.Tensor:
    """The explicit formula, for tests and for checking kernels: softmax(q k^T / sqrt(D) + mask) v."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = (q @ k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else logits + attn_mask
    return torch.softmax(logits, dim=-1) @ v
