"""One unattended GPU check: correctness of the CUDA paths and speed of the learned backends (`scripts/gpu-check`).

    scripts/gpu-check                  # on a CUDA machine: < 6 minutes on one H100/H200, model builds included
    scripts/gpu-check --dry-run        # the same code paths on the CPU, tiny configurations (CI runs this)
    RECON_REF_INFINITEVGGT=~/InfiniteVGGT RECON_REF_HORIZONSTREAM=~/HorizonStream scripts/gpu-check

What it runs, in order, each phase under its own share of the time budget so the whole run ends in time:
1. correctness on the device: the Triton KV-pruning and KDA kernels against their torch references; the attention
   dispatch (SDPA, xformers, FlashAttention where installed) against the explicit formula and each other; each
   learned model family in fp32 (TF32 off) against its golden fixture, and in bf16 autocast against its own fp32;
2. speed at 518x392 in bf16 with the full-size architectures and random weights: InfiniteVGGT (default budget),
   StreamVGGT, HorizonStream (sliding size 1), LASER over pi3: frames/s and peak GPU memory at frames 10, 100 and
   1000 (StreamVGGT to 100: its cache grows without bound), plus the pi3 window forward alone; and serving: 8
   InfiniteVGGT streams on one model stepped in one batched call per tick against one call per stream;
3. the reference implementations, where an environment variable gives a checkout (`RECON_REF_STREAMVGGT`,
   `RECON_REF_INFINITEVGGT`, `RECON_REF_HORIZONSTREAM`, `RECON_REF_PI3`): the same random weights loaded into the
   authors' model, the same frames, timed the same way, each in a child process (StreamVGGT and InfiniteVGGT share
   the package name `streamvggt`; a crash or OOM there must not end the run).

It writes one JSON (`--json`, default docs/benchmarks_gpu.json) and replaces the table between the markers in
docs/benchmarks_gpu.md (`--markdown`). The exit status is 1 when a correctness check fails or a phase crashed;
speed never fails the run, it is recorded. Reading the figures and recording them is the operator's job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("gpu-check")

REFERENCE_ENV = {
    "streamvggt": "RECON_REF_STREAMVGGT",
    "infinitevggt": "RECON_REF_INFINITEVGGT",
    "horizonstream": "RECON_REF_HORIZONSTREAM",
    "pi3": "RECON_REF_PI3",
}
MD_BEGIN, MD_END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"


# ----------------------------------------------------------------------------------------------------------------
# The plan: what a full run and a dry run do (the dry run is the full run at toy sizes on the CPU).
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    dry_run: bool
    device: str
    model_config: str  # "full" (published architectures, random weights) or "tiny"
    image_hw: tuple[int, int]
    milestones: tuple[int, ...]  # frame counts at which frames/s and peak memory are reported
    unbounded_milestones: tuple[int, ...]  # StreamVGGT (its cache grows with every frame)
    laser_frames: int
    laser_window: tuple[int, int]  # window size, overlap
    infinitevggt_budget: int
    horizonstream_window: int | None  # None: the model's window (10 at full size)
    compile_options: dict[str, Any] | bool  # torch.compile options of the compiled InfiniteVGGT step
    budget_s: float  # wall-clock budget of the whole run
    shares: dict[str, float] = field(default_factory=dict)  # fraction of budget_s per phase


def make_plan(dry_run: bool, budget_s: float | None) -> Plan:
    shares = {"correctness": 0.13, "infinitevggt": 0.15, "infinitevggt_static": 0.06, "streamvggt": 0.06,
              "horizonstream": 0.15, "laser": 0.07, "pi3_window": 0.03, "lingbot": 0.08, "infinitevggt_compiled": 0.12,
              "serve": 0.05, "references": 0.10}
    if dry_run:
        # 20 DINO patches/frame; a budget small enough that InfiniteVGGT prunes from the 3rd frame on; a
        # HorizonStream window of 2 so its first chunk and a sliding one both run within 3 frames.
        # Dynamo with the eager backend: the same capture as on the GPU, without minutes of CPU code generation.
        # No real time limit: on a busy CI machine a phase must not be skipped for time (that is the GPU run's
        # concern); the dry run takes tens of seconds on an idle 2-core machine.
        return Plan(True, "cpu", "tiny", (56, 70), (1, 2, 3), (1, 2), 4, (3, 1), 60, 2, {"backend": "eager"},
                    budget_s or 3600.0, shares)
    return Plan(False, "cuda", "full", (392, 518), (10, 100, 1000), (10, 100), 100, (20, 5), 1_200_000, None, True,
                budget_s or 330.0, shares)


class Deadline:
    """A phase's end time; `expired()` is checked between frames so a slow phase stops instead of overrunning."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() > self.end

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


class Budget:
    """The run's wall-clock budget handed out phase by phase: a phase starting now gets its share of what is left
    (in proportion to the shares of the phases still to come), so time a phase did not use goes to the later ones
    and the run as a whole never overruns."""

    def __init__(self, total_s: float, shares: dict[str, float]) -> None:
        self.run = Deadline(total_s)
        self.pending = dict(shares)

    def phase(self, name: str) -> Deadline:
        share = self.pending.pop(name)
        rest = share + sum(self.pending.values())
        return Deadline(self.run.left() * share / rest)


# ----------------------------------------------------------------------------------------------------------------
# Device helpers.
# ----------------------------------------------------------------------------------------------------------------

def _torch():
    import torch

    return torch


def sync(device: str) -> None:
    torch = _torch()
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    torch = _torch()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float:
    """Peak GPU memory allocated since the last reset (CUDA), or the process's resident set size (CPU)."""
    torch = _torch()
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def environment(plan: Plan) -> dict[str, Any]:
    torch = _torch()
    from recon.utils.imports import is_available

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": plan.device,
                           "dry_run": plan.dry_run, "aten_capability": torch.backends.cpu.get_cpu_capability()}
    if plan.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["capability"] = list(torch.cuda.get_device_capability())
        env["cuda"] = torch.version.cuda
    for module in ("triton", "xformers", "flash_attn", "fla"):
        env[module] = _version(module) if is_available(module) else None
    return env


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = {"fla": "flash-linear-attention", "flash_attn": "flash-attn"}
    try:
        return version(names.get(module, module))
    except PackageNotFoundError:
        return "installed"


def frame_stream(plan: Plan, n: int, seed: int = 0) -> Iterator[Any]:
    """`n` uint8 HxWx3 frames of one smooth random texture drifting 2 px per frame (host arrays, as cameras send)."""
    import numpy as np
    import torch.nn.functional as F

    torch = _torch()
    H, W = plan.image_hw
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, H // 8 + 1, (W + 2 * n) // 8 + 1, generator=gen)
    texture = F.interpolate(coarse, size=(H, W + 2 * n), mode="bilinear", align_corners=False)[0]
    texture = (texture.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    for i in range(n):
        yield np.ascontiguousarray(texture[:, 2 * i:2 * i + W])


# ----------------------------------------------------------------------------------------------------------------
# Correctness.
# ----------------------------------------------------------------------------------------------------------------

def _check(name: str, diff: float, tol: float, **detail: Any) -> dict[str, Any]:
    ok = math.isfinite(diff) and diff <= tol
    return {"name": name, "ok": ok, "max_diff": diff, "tol": tol, **detail}


def _check_close(name: str, got, ref, atol: float, rtol: float, **detail: Any) -> dict[str, Any]:
    """Elementwise |got - ref| <= atol + rtol |ref| (float64), as the golden tests compare."""
    got, ref = got.double().cpu(), ref.double().cpu()
    diff = (got - ref).abs()
    ok = bool(torch_isfinite(got) and (diff <= atol + rtol * ref.abs()).all())
    return {"name": name, "ok": ok, "max_abs_diff": float(diff.max()), "atol": atol, "rtol": rtol, **detail}


def torch_isfinite(t) -> bool:
    return bool(_torch().isfinite(t).all())


def _max_rel(got, ref) -> float:
    """max |got - ref| / max |ref| (float64), the scale-free comparison of a whole tensor."""
    got, ref = got.double(), ref.double()
    return float((got - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


def check_kv_prune(plan: Plan) -> list[dict[str, Any]]:
    """Triton scores and in-place compaction against the torch references (tests/kernels tolerances)."""
    torch = _torch()
    from recon.kernels.kv_prune import compact_kv_, compact_reference, diversity_scores, diversity_scores_reference

    out = []
    B, H, C, D = (1, 4, 300, 64) if plan.dry_run else (1, 16, 50_000, 64)
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        k = (torch.randn(B, H, C, D, generator=gen) + 0.7 * torch.randn(1, H, 1, D, generator=gen)).to(
            plan.device, dtype)
        ref = diversity_scores_reference(k)
        got = diversity_scores(k, impl="triton")
        # tests/kernels/test_kv_prune.py: atol 2e-6 + rtol 1e-5 on float32 scores (fp32 accumulation both ways).
        out.append(_check_close(f"kv_prune.scores.{str(dtype)[6:]}", got, ref, 2e-6, 1e-5, shape=[B, H, C, D]))
    n = C
    keep = torch.stack([torch.randperm(n - 10, generator=gen)[: n // 2].sort().values + 10 for _ in range(B * H)])
    keep = torch.cat([torch.arange(10).expand(B * H, 10), keep], 1).view(B, H, -1).to(plan.device)
    k = torch.randn(B, H, n, D, generator=gen).to(plan.device)
    v = torch.randn(B, H, n, D, generator=gen).to(plan.device)
    want_k, want_v = compact_reference(k, v, keep)
    compact_kv_(k, v, keep, n, skip=10, impl="triton")
    m = keep.shape[-1]
    exact = bool(torch.equal(k[:, :, :m], want_k) and torch.equal(v[:, :, :m], want_v))
    out.append({"name": "kv_prune.compact", "ok": exact, "exact": exact, "kept": m})
    return out


def check_kda(plan: Plan) -> list[dict[str, Any]]:
    """The chunked gated delta rule (torch on the device, our Triton kernel, fla where installed) vs the
    recurrence, in float32 (tests/kernels tolerances; fla's kernels use TF32 inside: README_horizonstream ~1e-3)."""
    torch = _torch()
    from recon.kernels.kda import gated_delta_rule, kda_recurrent
    from recon.utils.imports import is_available

    B, T, H, K, V = (1, 40, 2, 16, 16) if plan.dry_run else (1, 2000, 16, 64, 64)
    gen = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v, g = torch.randn(B, T, H, V, generator=gen), -0.5 * torch.rand(B, T, H, K, generator=gen)
    beta, s0 = torch.rand(B, T, H, generator=gen), torch.randn(B, H, K, V, generator=gen)
    ref_o, ref_s = kda_recurrent(q.double(), k.double(), v.double(), g.double(), beta.double(),
                                 initial_state=s0.double())
    args = [t.to(plan.device) for t in (q, k, v, g, beta)]
    impls = [("torch", 2e-5), ("triton", 2e-5)] + ([("fla", 2e-3)] if is_available("fla") and
                                                    plan.device.startswith("cuda") else [])
    out = []
    for impl, tol in impls:
        o, s = gated_delta_rule(*args, initial_state=s0.to(plan.device), impl=impl)
        diff = max(_max_rel(o.cpu(), ref_o), _max_rel(s.cpu(), ref_s))
        out.append(_check(f"kda.{impl}", diff, tol, shape=[B, T, H, K, V]))
    return out


def check_attention(plan: Plan) -> list[dict[str, Any]]:
    """Every installed kernel of the dispatch against the explicit formula (in float64) and against SDPA."""
    torch = _torch()
    from recon.errors import ConfigError, MissingDependencyError
    from recon.kernels.attention import IMPLEMENTATIONS, reference_attention, select_attention

    B, H, N, M, D = (1, 2, 17, 29, 16) if plan.dry_run else (1, 16, 1041, 50_000, 64)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(B, H, n, D, generator=gen) for n in (N, M, M))
    mask = torch.rand(B, 1, N, M, generator=gen) > 0.3
    mask[..., 0] = True
    # Relative to max |out|: unit roundoff times a few: fp32 1e-5, fp16 (u = 4.9e-4) 4e-3, bf16 (u = 3.9e-3) 3e-2.
    tols = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
    out = []
    for masked in (False, True):
        want = reference_attention(q.double(), k.double(), v.double(), mask if masked else None)
        for dtype, tol in tols.items():
            cast = [t.to(plan.device, dtype) for t in (q, k, v)]
            for name in IMPLEMENTATIONS:
                try:
                    impl = select_attention(plan.device, dtype, need_mask=masked, prefer=name)
                except (ConfigError, MissingDependencyError) as e:
                    out.append({"name": f"attention.{name}.{str(dtype)[6:]}.{'mask' if masked else 'nomask'}",
                                "ok": True, "skipped": str(e)})
                    continue
                got = impl(*cast, attn_mask=mask.to(plan.device) if masked else None)
                out.append(_check(f"attention.{name}.{str(dtype)[6:]}.{'mask' if masked else 'nomask'}",
                                  _max_rel(got.cpu(), want), tol, shape=[B, H, N, M, D]))
    return out


def _fixture(name: str) -> Path | None:
    root = Path(os.environ.get("RECON_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
    folder = root / name
    return folder if (folder / "config.json").is_file() else None


def _load(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.clone() for k, v in load_file(str(path)).items()}


def _family_runs(plan: Plan) -> Iterator[tuple[str, Callable[[Any], dict], dict | None]]:
    """(family, run(dtype_or_None) -> outputs, {key: (fixture output, atol, rtol)} or None) per family; the
    tolerances are the fixture READMEs' float32 ones.

    `run(None)` is fp32; `run(torch.bfloat16)` runs under bf16 autocast. Fixtures give weights with every path
    carrying signal; without them (a GPU box without ../shared) the tiny random models stand in.
    """
    torch = _torch()
    dev = torch.device(plan.device)

    def autocast(dtype):
        return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    from recon.models.vggt import VGGT, build_vggt, config_from_fixture

    for family, fixture in (("vggt", "vggt_tiny"), ("streamvggt", "streamvggt_tiny_stream_reference"),
                            ("infinitevggt", "infinitevggt_tiny_pruned")):
        folder = _fixture(fixture)
        if folder is not None:
            cfg = json.loads((folder / "config.json").read_text())
            model = VGGT(config_from_fixture(cfg["model"]))
            model.load_state_dict(_load(folder / "weights.safetensors"))
            images = _load(folder / "inputs.safetensors")["images"]
            want = _load(folder / "outputs.safetensors")
            budget = int(cfg.get("run", {}).get("total_budget", 240))
        else:
            model, want, budget = build_vggt(model_config="tiny", causal=family != "vggt", random_init=True), None, 60
            images = torch.rand(1, 4, 3, 56, 70, generator=torch.Generator().manual_seed(0))
        model = model.to(dev).eval()
        images = images.to(dev)

        def run(dtype, model=model, images=images, family=family, budget=budget):
            from recon.memory.policies import DiversityPruningPolicy

            with torch.inference_mode(), autocast(dtype):
                if family == "vggt":
                    o = model(images)
                    return {"depth": o["depth"].float(), "pose_enc": o["pose_enc"].float()}
                policy = DiversityPruningPolicy(budget) if family == "infinitevggt" else None
                session = model.new_session(camera_cache="reference", policy=policy)
                steps = [session.step(images[:, s]) for s in range(images.shape[1])]
            return {"depth": torch.stack([s["depth"] for s in steps]).float(),
                    "camera_pose": torch.stack([s["pose_enc"] for s in steps]).float()}

        pose = "pose_enc" if family == "vggt" else "camera_pose"
        # README_vggt_family / compare.tolerances.float32_reimplementation: atol 1e-4, rtol 1e-4.
        fixture_keys = None if want is None else {"depth": (want["depth"], 1e-4, 1e-4),
                                                  pose: (want[pose], 1e-4, 1e-4)}
        yield family, run, fixture_keys

    from recon.models.horizonstream import HorizonStream, HorizonStreamConfig, random_init, tiny_config

    folder = _fixture("horizonstream_tiny")
    if folder is not None:
        cfg = json.loads((folder / "config.json").read_text())
        hs = HorizonStream(HorizonStreamConfig.from_fixture(cfg))
        hs.load_state_dict(_load(folder / "weights.safetensors"))
        images = _load(folder / "inputs.safetensors")["images"][0]
        chunks = cfg["schedule"]["sli1"]["chunks"]
        ref = _load(folder / "outputs.safetensors")
        # README_horizonstream "Tolerances (fp32)": depth rtol 1e-4.
        hs_want = {"depth": (torch.cat([ref[f"sli1.chunk{c}.depth"] for c in range(len(chunks))], 1), 0.0, 1e-4)}
    else:
        hs, hs_want = random_init(HorizonStream(tiny_config())), None
        images = torch.rand(6, 3, 56, 70, generator=torch.Generator().manual_seed(0))
        chunks = [[0, 4], [4, 5], [5, 6]]
    hs = hs.to(dev).eval()
    images = images.to(dev)

    def run_hs(dtype):
        state, depth = hs.new_state(), []
        with torch.inference_mode(), autocast(dtype):
            for a, b in chunks:
                out, state = hs.forward_chunk(images[a:b], state)
                depth.append(out["depth"].float())
        return {"depth": torch.cat(depth, 1)}

    yield "horizonstream", run_hs, hs_want

    from recon.models.pi3 import Pi3, Pi3Config
    from recon.models.pi3 import tiny_config as pi3_tiny

    folder = _fixture("pi3_tiny")
    if folder is not None:
        pi3 = Pi3(Pi3Config.from_fixture(json.loads((folder / "config.json").read_text())))
        pi3.load_state_dict(_load(folder / "weights.safetensors"))
        pimg = _load(folder / "inputs.safetensors")["images"]
        ref = _load(folder / "outputs.safetensors")
        # pi3_tiny README: float32 atol 1e-4 on local points, 2e-5 on poses.
        pi3_want = {"local_points": (ref["f32.local_points"], 1e-4, 0.0),
                    "camera_poses": (ref["f32.camera_poses"], 2e-5, 0.0)}
    else:
        pi3, pi3_want = Pi3(pi3_tiny()), None
        pimg = torch.rand(1, 3, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    pi3 = pi3.to(dev).eval()
    pimg = pimg.to(dev)

    def run_pi3(dtype):
        with torch.inference_mode(), autocast(dtype):
            o = pi3(pimg)
        return {"local_points": o["local_points"].float(), "camera_poses": o["camera_poses"].float()}

    yield "pi3", run_pi3, pi3_want


def check_families(plan: Plan, deadline: Deadline) -> list[dict[str, Any]]:
    """fp32 on the device against the fixture (relative to its magnitude, at the fixture's float32 tolerance), and
    bf16 autocast against fp32: a sanity bound, not fidelity (bf16 rounds at 3.9e-3; through ~20 layers the
    outputs move by ~1e-2, so the median relative depth change must stay under 5e-2 and nothing may be NaN)."""
    torch = _torch()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = []
    for family, run, want in _family_runs(plan):
        if deadline.expired():
            out.append({"name": f"family.{family}", "ok": True, "skipped": "time budget"})
            continue
        fp32 = run(None)
        for key, (ref, atol, rtol) in (want or {}).items():
            out.append(_check_close(f"family.{family}.fp32_vs_fixture.{key}", fp32[key], ref, atol, rtol))
        bf16 = run(torch.bfloat16)
        key = next(iter(fp32))
        rel = ((bf16[key] - fp32[key]).abs() / fp32[key].abs().clamp(min=1e-6)).double()
        finite = all(bool(torch.isfinite(t).all()) for t in bf16.values())
        median = float(rel.median()) if finite else math.inf
        out.append(_check(f"family.{family}.bf16_vs_fp32", median, 5e-2, key=key, max_rel=float(rel.max())))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Speed of our backends.
# ----------------------------------------------------------------------------------------------------------------

def _window(m: int) -> int:
    """Frames averaged for the frames/s reported at milestone m: the last m//2, at most 10."""
    return max(1, min(10, m // 2))


def time_stream(step: Callable[[int], Any], milestones: tuple[int, ...], device: str, deadline: Deadline,
                finish: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run `step(i)` for frames 0..max(milestones)-1; frames/s over the window before each milestone (synchronised at
    both ends) and the peak memory up to it. Stops early, saying where, when the deadline passes."""
    marks = {m - _window(m) for m in milestones} | set(milestones)
    stamps: dict[int, float] = {}
    result: dict[str, Any] = {"milestones": {}, "stopped_at": None}
    reset_peak(device)
    sync(device)
    stamps[0] = time.perf_counter()
    t0 = stamps[0]
    last = max(milestones)
    for i in range(last):
        if deadline.expired():
            result["stopped_at"] = i
            break
        step(i)
        if i + 1 == last and finish is not None:
            finish()  # results still pending (windowed, asynchronous backends) count in the last window
            finish = None
        if i + 1 in marks:
            sync(device)
            stamps[i + 1] = time.perf_counter()
            if i + 1 in milestones:
                m = i + 1
                w = _window(m)
                result["milestones"][str(m)] = {"fps": w / (stamps[m] - stamps[m - w]), "peak_mb": peak_mb(device)}
    if finish is not None:
        finish()
        sync(device)
    result["frames"] = result["stopped_at"] if result["stopped_at"] is not None else max(milestones)
    result["wall_s"] = time.perf_counter() - t0
    return result


def _frame(i: int, image) -> Any:
    from recon.types import Frame

    return Frame("gpu-check", i, 1_000_000 * i, image)


def _run_backend(backend, plan: Plan, milestones: tuple[int, ...], deadline: Deadline) -> dict[str, Any]:
    frames = list(frame_stream(plan, max(milestones)))
    return time_stream(lambda i: backend.step(_frame(i, frames[i])), milestones, plan.device, deadline,
                       finish=backend.flush)


VARIANTS = {  # speed phase -> (backend, options, label)
    "infinitevggt_static": ("infinitevggt", {"static": True}, "recon (static shapes)"),
    "infinitevggt_compiled": ("infinitevggt", {"compile": None}, "recon (static, compiled)"),
}


def build_ours(name: str, plan: Plan) -> Any:
    """Our backend `name` at the plan's size with random weights, computing in bf16 (weights fp32)."""
    torch = _torch()
    from recon.backends import create_backend

    dev = torch.device(plan.device)
    width = plan.image_hw[1]
    common = {"device": plan.device, "dtype": "bf16", "image_width": width}
    if name in VARIANTS:
        backend, options, _ = VARIANTS[name]
        options = {k: plan.compile_options if k == "compile" else v for k, v in options.items()}
        return create_backend(backend, random_init=True, model_config=plan.model_config,
                              budget=plan.infinitevggt_budget, **common, **options)
    if name in ("infinitevggt", "streamvggt"):
        extra = {"budget": plan.infinitevggt_budget} if name == "infinitevggt" else {}
        return create_backend(name, random_init=True, model_config=plan.model_config, **common, **extra)
    if name == "horizonstream":
        from recon.backends.horizonstream import HorizonStreamBackend
        from recon.models.horizonstream import HorizonStream, HorizonStreamConfig, random_init, tiny_config

        cfg = HorizonStreamConfig() if plan.model_config == "full" else tiny_config()
        model = random_init(HorizonStream(cfg)).to(dev).eval()
        return HorizonStreamBackend(model, device=dev, autocast_dtype=torch.bfloat16, image_width=width,
                                    sliding_size=1, window_size=plan.horizonstream_window)
    if name == "laser":
        from recon.backends.laser import LaserBackend

        window, overlap = plan.laser_window
        return LaserBackend(pi3_window_model(plan), window_size=window, overlap=overlap, image_width=width)
    raise ValueError(name)


def pi3_window_model(plan: Plan) -> Any:
    torch = _torch()
    from recon.models.pi3 import Pi3, Pi3Config, Pi3WindowModel, tiny_config

    dev = torch.device(plan.device)
    model = Pi3(Pi3Config() if plan.model_config == "full" else tiny_config()).to(dev).eval()
    return Pi3WindowModel(model, dev, torch.bfloat16)


def speed_ours(name: str, plan: Plan, deadline: Deadline) -> dict[str, Any]:
    t = time.perf_counter()
    backend = build_ours(name, plan)
    build_s = time.perf_counter() - t
    if name == "laser":
        res = _run_backend(backend, plan, (plan.laser_frames,), deadline)
    else:
        res = _run_backend(backend, plan, plan.unbounded_milestones if name == "streamvggt" else plan.milestones,
                           deadline)
    close = getattr(backend, "close", None)
    if close is not None:
        close()
    method, _, label = VARIANTS.get(name, (name, None, "recon"))
    return {"method": method, "impl": label, "build_s": build_s, **res}


def speed_lingbot(plan: Plan) -> dict[str, Any]:
    """LingBot-Map through its own GPU-check entry point (`recon.commands.bench_lingbot.gpu_check`, which also
    runs the authors' package side by side when it is importable), at 518x378 (its 14-px grid near 518x392)."""
    from recon.commands.bench_lingbot import gpu_check

    frames = 12 if plan.dry_run else 120  # the dry run of `recon bench lingbot`: 12 frames of 2x3 patches
    grid = (2, 3) if plan.dry_run else (27, 37)
    report = gpu_check(device=plan.device, frames=frames, grid=grid, dtype="bf16", repeats=1 if plan.dry_run else 2,
                       model_config=plan.model_config)
    peak = report.get("peak_gpu_mb", peak_mb(plan.device))
    out = {"method": "lingbot", "impl": "recon",
           "milestones": {str(frames): {"fps": report["ours"]["fps_median"], "peak_mb": peak}}, "lingbot": report}
    return out


def speed_pi3_window(plan: Plan, deadline: Deadline) -> dict[str, Any]:
    """Our pi3 forward on one LASER window (window frames in one call), ms per window."""
    torch = _torch()
    wm = pi3_window_model(plan)
    window = plan.laser_window[0]
    images = torch.rand(window, 3, *plan.image_hw, generator=torch.Generator().manual_seed(0)).to(plan.device)
    return {"method": "pi3_window", "impl": "recon",
            **time_stream(lambda i: wm.predict_window(images), (2, 4) if plan.dry_run else (3, 8), plan.device,
                          deadline)}


# ----------------------------------------------------------------------------------------------------------------
# The reference implementations (child processes).
# ----------------------------------------------------------------------------------------------------------------

def speed_serve(plan: Plan, deadline: Deadline) -> dict[str, Any]:
    """Eight InfiniteVGGT streams on one model, batched in one call per tick vs one call per stream
    (`recon bench serve`, recon.models.batched): aggregate frames/s, p99 per-stream latency in ticks, peak memory.
    The milestone is the number of timed ticks (the first of the plan's milestones)."""
    from recon.commands.bench_serve import _model, measure_throughput

    torch = _torch()
    streams = 2 if plan.dry_run else 8
    ticks = plan.milestones[0] if not plan.dry_run else 2
    model = _model(plan.model_config, plan.device)
    args = argparse.Namespace(device=plan.device, ticks=ticks, rounds=1 if plan.dry_run else 2, warmup=1)
    reset_peak(plan.device)
    with torch.autocast(plan.device, dtype=torch.bfloat16, enabled=not plan.dry_run):
        r = measure_throughput(model, streams, plan.image_hw, args)
    b, u = r["batched"], r["unbatched"]
    logger.info("serve: %d streams, %.1f fps batched, %.1f unbatched (x%.2f), p99 %.2f ticks (%.1f s left)", streams,
                b["fps"], u["fps"], r["speedup"], b["p99_ticks"], deadline.left())
    return {"method": "serve", "impl": f"recon, {streams} streams batched (x{r['speedup']:.2f} unbatched)",
            "milestones": {str(ticks): {"fps": b["fps"], "peak_mb": peak_mb(plan.device)}}, "serve": r}


def reference_path(name: str) -> Path | None:
    value = os.environ.get(REFERENCE_ENV[name])
    return Path(value).expanduser() if value else None


def _import_reference(name: str, root: Path):
    """The authors' model class from their checkout (its `src/` first where the repo keeps code there)."""
    import importlib

    for sub in ("src", "."):
        if (root / sub).is_dir():
            sys.path.insert(0, str((root / sub).resolve()))
    module, cls = {"streamvggt": ("streamvggt.models.streamvggt", "StreamVGGT"),
                   "infinitevggt": ("streamvggt.models.streamvggt", "StreamVGGT"),
                   "horizonstream": ("horizonstream.models.horizonstream", "HorizonStream"),
                   "pi3": ("pi3.models.pi3", "Pi3")}[name]
    return getattr(importlib.import_module(module), cls)


def _load_ours_into(ref_model, ours) -> dict[str, Any]:
    """Our random weights into the reference model (official key names; the reference's track head stays)."""
    missing, unexpected = ref_model.load_state_dict(ours.state_dict(), strict=False)
    return {"missing": len(missing), "missing_not_track_head": [k for k in missing if "track_head" not in k][:5],
            "unexpected": list(unexpected)[:5]}


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    """Raised from a timing hook when the phase's deadline passes inside the reference's own loop."""


def _hook_timer(module, milestones: tuple[int, ...], device: str, deadline: Deadline, result: dict) -> Any:
    """A forward hook on the module that runs once per frame in the reference's loop: the same windows and
    synchronisation as `time_stream`."""
    marks = {m - _window(m) for m in milestones} | set(milestones)
    stamps: dict[int, float] = {}
    count = [0]

    def hook(_mod, _inp, _out):
        count[0] += 1
        i = count[0]
        if i in marks:
            sync(device)
            stamps[i] = time.perf_counter()
            if i in milestones:
                w = _window(i)
                if i - w in stamps:
                    result["milestones"][str(i)] = {"fps": w / (stamps[i] - stamps[i - w]), "peak_mb": peak_mb(device)}
        if deadline.expired() or i >= max(milestones):
            result["stopped_at"] = i if i < max(milestones) else None
            result["frames"] = i
            raise _Stop

    sync(device)
    stamps[0] = time.perf_counter()
    return module.register_forward_hook(hook)


def run_reference(name: str, plan: Plan, seconds: float) -> dict[str, Any]:
    """Time the authors' code on our frames with our random weights (called in the child process)."""
    torch = _torch()
    deadline = Deadline(seconds)
    root = reference_path(name)
    assert root is not None
    cls = _import_reference(name, root)
    dev = torch.device(plan.device)
    H, W = plan.image_hw
    result: dict[str, Any] = {"method": name, "impl": "reference", "path": str(root), "milestones": {},
                              "stopped_at": None}
    t = time.perf_counter()
    if name in ("streamvggt", "infinitevggt"):
        from recon.models.vggt import build_vggt

        ours = build_vggt(model_config=plan.model_config, causal=True, random_init=True)
        kwargs = {"total_budget": plan.infinitevggt_budget} if name == "infinitevggt" else {}
        ref = cls(**kwargs)
        result["weights"] = _load_ours_into(ref, ours)
        ref = ref.to(dev).eval()
        result["build_s"] = time.perf_counter() - t
        milestones = plan.unbounded_milestones if name == "streamvggt" else plan.milestones
        frames = [{"img": (torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255).to(dev)}
                  for f in frame_stream(plan, max(milestones))]
        reset_peak(plan.device)
        handle = _hook_timer(ref.aggregator, milestones, plan.device, deadline, result)
        with contextlib.suppress(_Stop), torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
            ref.inference(frames)
        handle.remove()
    elif name == "horizonstream":
        from recon.models.horizonstream import HorizonStream, HorizonStreamConfig, random_init, tiny_config

        ours = random_init(HorizonStream(HorizonStreamConfig() if plan.model_config == "full" else tiny_config()))
        ref = cls(**_horizonstream_reference_cfg(root, ours.config))
        result["weights"] = _load_ours_into(ref, ours)
        ref = ref.to(dev).eval()
        result["build_s"] = time.perf_counter() - t
        win = plan.horizonstream_window or ours.config.window_size
        frames = [(torch.from_numpy(f).permute(2, 0, 1).float() / 255).to(dev)
                  for f in frame_stream(plan, max(plan.milestones))]
        state = ref.build_sequence_state()
        pending: list = []
        chunk = [0]

        def step(i: int) -> None:
            # The reference's streaming API driven as its infer.py does: a first window, then sliding size 1.
            pending.append(frames[i])
            if len(pending) == (win if chunk[0] == 0 else 1):
                ref.forward_chunk(torch.stack(pending)[None], window_size=win, chunk_idx=chunk[0], **state)
                ref.advance_sequence_state(state, is_last_chunk=False)
                pending.clear()
                chunk[0] += 1

        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
            result.update(time_stream(step, plan.milestones, plan.device, deadline))
    elif name == "pi3":
        from recon.models.pi3 import Pi3, Pi3Config, tiny_config

        ours = Pi3(Pi3Config() if plan.model_config == "full" else tiny_config())
        ref = cls()
        result["weights"] = _load_ours_into(ref, ours)
        ref = ref.to(dev).eval()
        result["build_s"] = time.perf_counter() - t
        images = torch.rand(1, plan.laser_window[0], 3, H, W, generator=torch.Generator().manual_seed(0)).to(dev)
        result.update(time_stream(lambda i: ref(images), (2, 4) if plan.dry_run else (3, 8), plan.device,
                                  deadline))
        result["method"] = "pi3_window"
    result.setdefault("frames", max(plan.milestones))
    return result


def _horizonstream_reference_cfg(root: Path, cfg: Any) -> dict[str, Any]:
    """The model section of the checkout's `configs/horizonstream_infer.yaml` (full size), else one built from
    our config's values (the tiny stand-in)."""
    import yaml

    path = root / "configs" / "horizonstream_infer.yaml"
    if path.is_file():
        model = dict(yaml.safe_load(path.read_text())["model"]["horizonstream_cfg"])
        model["load_pretrained"] = False
        return model
    return {"tiny_config": cfg.to_dict()}


def speed_reference(name: str, plan: Plan, deadline: Deadline, args: argparse.Namespace) -> dict[str, Any]:
    """Run `run_reference` in a child process with the phase's time left; its JSON comes back on a file."""
    out = Path(args.scratch) / f"reference_{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--reference", name, "--reference-out", str(out),
           "--reference-seconds", f"{max(deadline.left() - 15, 5):.0f}"] + (["--dry-run"] if plan.dry_run else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(deadline.left(), 10))
    except subprocess.TimeoutExpired:
        return {"method": name, "impl": "reference", "error": "timed out"}
    if proc.returncode != 0 or not out.is_file():
        return {"method": name, "impl": "reference", "error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------------------------

def markdown_table(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"Run {report['started']} on {env.get('gpu', env['device'])} (torch {env['torch']}, "
             f"{'dry run, tiny models on the CPU' if env['dry_run'] else 'bf16, 518x392, random weights'}); "
             f"{report['wall_s']:.0f} s; command `{report['command']}`.", ""]
    ms = sorted({m for r in report["speed"] for m in r.get("milestones", {})}, key=int)
    lines.append("| method | impl | build s | " + " | ".join(f"fps @{m} | peak MB @{m}" for m in ms) + " | note |")
    lines.append("|---|---|---|" + "---|---|" * len(ms) + "---|")
    for r in report["speed"]:
        cells = []
        for m in ms:
            got = r.get("milestones", {}).get(m)
            cells += [f"{got['fps']:.1f}", f"{got['peak_mb']:.0f}"] if got else ["-", "-"]
        note = r.get("error", "")[:80].replace("\n", " ").replace("|", "/")
        if r.get("stopped_at") is not None:
            note = f"stopped at frame {r['stopped_at']} (time budget) {note}"
        build = f"{r['build_s']:.1f}" if "build_s" in r else "-"
        lines.append(f"| {r['method']} | {r['impl']} | {build} | " + " | ".join(cells) + f" | {note} |")
    checks = report["correctness"]
    failed = [c["name"] for c in checks if not c["ok"]]
    lines += ["", f"Correctness: {sum(c['ok'] for c in checks)}/{len(checks)} checks passed"
              + (f"; failed: {', '.join(failed)}" if failed else "") + "."]
    return "\n".join(lines)


def write_markdown(path: Path, table: str) -> None:
    """Replace the block between the gpu-check markers (the rest of the page is hand-written)."""
    text = path.read_text() if path.is_file() else f"# GPU benchmarks\n\n{MD_BEGIN}\n{MD_END}\n"
    if MD_BEGIN not in text or MD_END not in text:
        text = text.rstrip() + f"\n\n{MD_BEGIN}\n{MD_END}\n"
    head, rest = text.split(MD_BEGIN, 1)
    _, tail = rest.split(MD_END, 1)
    path.write_text(f"{head}{MD_BEGIN}\n{table}\n{MD_END}{tail}")


# ----------------------------------------------------------------------------------------------------------------
# Main.
# ----------------------------------------------------------------------------------------------------------------

def _phase(report: dict, key: str, fn: Callable[[], Any]) -> None:
    """Run one phase; a crash is recorded (and fails the run) instead of ending it."""
    t = time.perf_counter()
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001 - unattended: record anything and carry on
        logger.error("phase %s failed: %s", key, e)
        report["errors"].append({"phase": key, "error": f"{type(e).__name__}: {e}",
                                 "traceback": traceback.format_exc()[-4000:]})
        return
    finally:
        report["phase_s"][key] = round(time.perf_counter() - t, 2)
    if isinstance(value, list):
        report["correctness"] += value
    elif value is not None:
        report["speed"].append(value)


def run(args: argparse.Namespace) -> int:
    torch = _torch()
    plan = make_plan(args.dry_run, args.budget_s)
    if not plan.dry_run and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; use --dry-run for the CPU rehearsal", file=sys.stderr)  # noqa: T201
        return 2
    started = time.perf_counter()
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv),
                              "plan": asdict(plan), "environment": environment(plan), "correctness": [],
                              "speed": [], "errors": [], "phase_s": {}}
    refs = [n for n in REFERENCE_ENV if reference_path(n) is not None]
    shares = dict(plan.shares)
    ref_share = shares.pop("references")
    shares.update({f"reference.{n}": ref_share / len(refs) for n in refs})
    budget = Budget(plan.budget_s, shares)
    logger.info("gpu-check: %s", json.dumps(report["environment"]))
    correctness = budget.phase("correctness")
    for key, fn in (("kv_prune", lambda: check_kv_prune(plan)), ("kda", lambda: check_kda(plan)),
                    ("attention", lambda: check_attention(plan)),
                    ("families", lambda: check_families(plan, correctness))):
        _phase(report, key, fn)
    for name in ("infinitevggt", "infinitevggt_static", "streamvggt", "horizonstream", "laser"):
        _phase(report, name, lambda name=name: speed_ours(name, plan, budget.phase(name)))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    _phase(report, "pi3_window", lambda: speed_pi3_window(plan, budget.phase("pi3_window")))
    budget.phase("lingbot")  # its entry point sizes itself (120 frames, two repeats); the share is reserved for it
    _phase(report, "lingbot", lambda: speed_lingbot(plan))
    _phase(report, "serve", lambda: speed_serve(plan, budget.phase("serve")))
    # Last of ours: compiling the full-size step takes an unknown while the first time (frame 1 of the phase).
    _phase(report, "infinitevggt_compiled",
           lambda: speed_ours("infinitevggt_compiled", plan, budget.phase("infinitevggt_compiled")))
    for name in refs:
        _phase(report, f"reference.{name}",
               lambda name=name: speed_reference(name, plan, budget.phase(f"reference.{name}"), args))
    report["references_not_given"] = [REFERENCE_ENV[n] for n in REFERENCE_ENV if n not in refs]
    report["wall_s"] = time.perf_counter() - started
    ok = all(c["ok"] for c in report["correctness"]) and not report["errors"] and \
        not any("error" in s for s in report["speed"])
    report["ok"] = ok
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    write_markdown(Path(args.markdown), markdown_table(report))
    print(markdown_table(report))  # noqa: T201 - command output
    for c in report["correctness"]:
        if not c["ok"]:
            print(f"FAILED {c['name']}: {json.dumps(c, default=str)}")  # noqa: T201
    for e in report["errors"]:
        print(f"ERROR in {e['phase']}: {e['error']}")  # noqa: T201
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny configurations on the CPU (what CI runs)")
    parser.add_argument("--json", default=str(REPO / "docs" / "benchmarks_gpu.json"), help="JSON report path")
    parser.add_argument("--markdown", default=str(REPO / "docs" / "benchmarks_gpu.md"),
                        help="markdown page whose gpu-check block is replaced")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 330 s; dry 3600 s)")
    parser.add_argument("--scratch", default=None, help="folder for the child processes' files (default: a temp dir)")
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    parser.add_argument("--reference-out", help=argparse.SUPPRESS)
    parser.add_argument("--reference-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run in the CPU interpreter
    sys.path.insert(0, str(REPO))
    if args.reference:
        plan = make_plan(args.dry_run, None)
        Path(args.reference_out).write_text(json.dumps(run_reference(args.reference, plan, args.reference_seconds),
                                                       default=str))
        return 0
    if args.scratch is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            args.scratch = tmp
            return run(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
