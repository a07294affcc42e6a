"""`scripts/gpu-check --dry-run`: the GPU check's own code paths on the CPU, as a real process, so it cannot rot.

The reference adapters are exercised with stand-in packages (tests/scripts/standins: the authors' import paths and
API surface, backed by recon's tiny models), pointed at by the same environment variables a GPU run uses.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

STANDINS = Path(__file__).parent / "standins"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check")
    page = out / "benchmarks_gpu.md"
    page.write_text((REPO_ROOT / "docs" / "benchmarks_gpu.md").read_text())
    env = dict(os.environ, RECON_REF_STREAMVGGT=str(STANDINS / "streamvggt_repo"),
               RECON_REF_HORIZONSTREAM=str(STANDINS / "horizonstream_repo"), RECON_REF_PI3=str(STANDINS / "pi3_repo"))
    env.pop("RECON_REF_INFINITEVGGT", None)
    proc = subprocess.run([str(REPO_ROOT / "scripts" / "gpu-check"), "--dry-run", "--json", str(out / "r.json"),
                           "--markdown", str(page)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "r.json").read_text()), page.read_text(), proc


def test_dry_run_checks_every_kernel_and_family(dry_run) -> None:
    report, _, _ = dry_run
    assert report["ok"] and not report["errors"]
    names = {c["name"] for c in report["correctness"] if "skipped" not in c}
    assert {"kv_prune.scores.float32", "kv_prune.compact", "kda.torch", "kda.triton",
            "attention.sdpa.bfloat16.mask"} <= names
    for family in ("vggt", "streamvggt", "infinitevggt", "horizonstream", "pi3"):
        assert f"family.{family}.bf16_vs_fp32" in names, family
        assert any(n.startswith(f"family.{family}.fp32_vs_fixture") for n in names), family
    assert all(c["ok"] for c in report["correctness"])


def test_dry_run_times_every_backend_and_each_reference_adapter(dry_run) -> None:
    report, _, _ = dry_run
    plan = report["plan"]
    by = {(s["method"], s["impl"]): s for s in report["speed"]}
    for key in (("infinitevggt", "recon"), ("horizonstream", "recon"), ("infinitevggt", "recon (static shapes)"),
                ("infinitevggt", "recon (static, compiled)")):
        assert sorted(by[key]["milestones"], key=int) == [str(m) for m in plan["milestones"]], key
    assert sorted(by["streamvggt", "recon"]["milestones"], key=int) == [str(m) for m in plan["unbounded_milestones"]]
    assert by["laser", "recon"]["milestones"] and by["pi3_window", "recon"]["milestones"]
    assert by["lingbot", "recon"]["milestones"]
    for method in ("streamvggt", "horizonstream", "pi3_window"):
        ref = by[method, "reference"]
        assert "error" not in ref and ref["milestones"], ref
        assert ref["weights"]["missing"] == 0 and not ref["weights"]["unexpected"], ref["weights"]
    assert report["references_not_given"] == ["RECON_REF_INFINITEVGGT"]
    assert all(v["fps"] > 0 and v["peak_mb"] > 0 for s in report["speed"] for v in s["milestones"].values())


def test_markdown_block_is_replaced_and_the_page_kept(dry_run) -> None:
    _, page, _ = dry_run
    head, block = page.split("<!-- gpu-check:begin -->")
    assert "# GPU benchmarks" in head and "Goal (issue 11)" in head  # the hand-written part survives
    assert "| infinitevggt | recon |" in block and "| horizonstream | reference |" in block
    assert "Not measured" not in block and block.rstrip().endswith("<!-- gpu-check:end -->")


def test_budget_hands_unused_time_to_later_phases(monkeypatch) -> None:
    gc = _load_script()
    clock = [1000.0]
    monkeypatch.setattr(gc.time, "monotonic", lambda: clock[0])
    budget = gc.Budget(100.0, {"a": 0.5, "b": 0.25, "c": 0.25})
    a = budget.phase("a")
    assert a.left() == 50.0
    clock[0] += 10.0  # phase a needed 10 s: b and c share the 90 s left
    assert budget.phase("b").left() == 45.0
    clock[0] += 80.0  # b overran its 45 s: c gets only what the run has left
    assert budget.phase("c").left() == 10.0 and not budget.run.expired()


def test_full_run_refuses_without_cuda() -> None:
    gc = _load_script()
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gc.main(["--json", "/dev/null", "--markdown", "/dev/null"]) == 2
