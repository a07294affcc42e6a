"""Helpers shared by the fixture runners: loading fixture files, comparing outputs, and the float32 rounding bound
that keeps comparisons independent of the CPU's BLAS kernel.

Why a bound and not a number: a float32 dot product of n terms may be summed in any order, with or without fused
multiply-adds, depending on which kernel OpenBLAS / MKL / ATen picks for this CPU (`OPENBLAS_CORETYPE`,
`MKL_ENABLE_INSTRUCTIONS`, `ATEN_CPU_CAPABILITY`). Every such evaluation lies within gamma_n * sum|a_i b_i| of the
exact value (gamma_n = n*u / (1 - n*u), u = 2^-24; Higham, "Accuracy and Stability of Numerical Algorithms",
2nd ed., Lemma 3.1 and eq. 3.5), so two of them differ by at most 2 * gamma_n * sum|a_i b_i|. A fixture value the
reference computed that way is compared within that bound, scaled by the magnitudes that formed it, not at a
float64 tolerance its last bit cannot meet on another machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

# Which tolerance set of `compare.tolerances` the model runners use; env-tunable (STYLE §6.13).
TOLERANCE_SET = os.environ.get("RECON_GOLDEN_TOLERANCE", "float64_reimplementation")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, cloning every tensor (the loader may return unaligned storage)."""
    return {k: v.clone() for k, v in load_file(str(path)).items()}


# ATen capabilities whose float32 kernels are compiled with fused multiply-adds, as the kernels that wrote the
# fixtures' float32 islands were (AVX2 and AVX-512 builds agree bit for bit on them; the DEFAULT build does not).
FMA_CAPABILITIES = ("AVX2", "AVX512")


def float32_islands_reproducible() -> bool:
    """Whether this process's ATen kernels round float32 islands as the fixtures' reference run did.

    The islands (DINO pos-embed bicubic resize, RoPE angles) are float32 ops inside float64 runs. ATen compiles
    its CPU kernels once per capability, and the AVX2 / AVX-512 builds contract `acc += w * x` into fused
    multiply-adds where the DEFAULT build (a CPU without AVX2, or ATEN_CPU_CAPABILITY=default) rounds twice: the
    antialiased bicubic resize then differs by one float32 ulp (1.4e-7 measured), which no float64 run can undo.
    """
    return torch.backends.cpu.get_cpu_capability() in FMA_CAPABILITIES


def tolerances(cfg: dict, name: str | None = None) -> tuple[float, float]:
    """(atol, rtol) from `cfg["compare"]["tolerances"][name]`, overridable by RECON_GOLDEN_ATOL/RTOL.

    The float64 set that assumes the float32 islands are copied bit for bit (`float64_reimplementation`) falls
    back to the fixture's own `float64_without_float32_islands` set where those islands cannot round the
    reference's way (`float32_islands_reproducible`): that set is the README's tolerance for islands that differ.
    """
    sets = cfg["compare"]["tolerances"]
    name = name or TOLERANCE_SET
    if name == "float64_reimplementation" and not float32_islands_reproducible() and \
            "float64_without_float32_islands" in sets:
        name = "float64_without_float32_islands"
    tol = sets[name]
    atol = float(os.environ.get("RECON_GOLDEN_ATOL", tol["atol"]))
    rtol = float(os.environ.get("RECON_GOLDEN_RTOL", tol["rtol"]))
    return atol, rtol


FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24


def float32_dot_bound(abs_products_sum: torch.Tensor, n_terms: int) -> torch.Tensor:
    """Largest difference between two float32 evaluations of sums of `n_terms` products whose absolute values sum to
    `abs_products_sum` (elementwise), whatever the summation order or FMA use: 2 * gamma_n * sum|a_i b_i|."""
    nu = n_terms * FLOAT32_UNIT_ROUNDOFF
    return 2.0 * nu / (1.0 - nu) * abs_products_sum.double()


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
    bounds: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Assert every key of `want` is in `got` and matches (exactly for exact keys and integer/bool tensors).

    `bounds` adds a per-key, per-element absolute allowance to `atol + rtol * |ref|`: the rounding bound of values
    the reference computed in a lower precision than it stored (see `float32_dot_bound`).
    """
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
        if bounds is not None and key in bounds:
            bound = bound + bounds[key].double()
        if not bool((diff <= bound).all()):
            failures.append(f"{key}: max abs diff {diff.max().item():.3e} > atol {atol:g} / rtol {rtol:g}")
    assert not failures, "\n".join(failures)
