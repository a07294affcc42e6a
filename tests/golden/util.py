"""Helpers shared by the fixture runners: loading fixture files and comparing outputs."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

# Which tolerance set of `compare.tolerances` the model runners use; env-tunable (STYLE §6.13).
TOLERANCE_SET = os.environ.get("RECON_GOLDEN_TOLERANCE", "float64_reimplementation")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, cloning every tensor (the loader may return unaligned storage)."""
    return {k: v.clone() for k, v in load_file(str(path)).items()}


def tolerances(cfg: dict, name: str | None = None) -> tuple[float, float]:
    """(atol, rtol) from `cfg["compare"]["tolerances"][name]`, overridable by RECON_GOLDEN_ATOL/RTOL."""
    tol = cfg["compare"]["tolerances"][name or TOLERANCE_SET]
    atol = float(os.environ.get("RECON_GOLDEN_ATOL", tol["atol"]))
    rtol = float(os.environ.get("RECON_GOLDEN_RTOL", tol["rtol"]))
    return atol, rtol


def is_exact(key: str, exact_keys: list[str]) -> bool:
    """True when `key` (or its dotted prefix) is listed as exact, or holds integers/bools."""
    return any(key == k or key.startswith(k + ".") or key.startswith(k) for k in exact_keys)


def compare_outputs(
    got: dict[str, torch.Tensor],
    want: dict[str, torch.Tensor],
    *,
    atol: float,
    rtol: float,
    exact_keys: list[str] = (),
) -> None:
    """Assert every key of `want` is in `got` and matches (exactly for exact keys and integer/bool tensors)."""
    missing = sorted(set(want) - set(got))
    assert not missing, f"outputs not produced: {missing}"
    failures = []
    for key, ref in want.items():
        out = got[key]
        if is_exact(key, list(exact_keys)) or not ref.is_floating_point():
            if out.shape != ref.shape or not torch.equal(out.to(ref.dtype), ref):
                failures.append(f"{key}: not exactly equal (shape {tuple(out.shape)} vs {tuple(ref.shape)})")
            continue
        if out.shape != ref.shape:
            failures.append(f"{key}: shape {tuple(out.shape)} vs {tuple(ref.shape)}")
            continue
        diff = (out.double() - ref.double()).abs()
        bound = atol + rtol * ref.double().abs()
        if not bool((diff <= bound).all()):
            failures.append(f"{key}: max abs diff {diff.max().item():.3e} > atol {atol:g} / rtol {rtol:g}")
    assert not failures, "\n".join(failures)
