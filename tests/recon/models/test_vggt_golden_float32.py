"""Float32 runs of the VGGT-family fixtures against their float64 reference outputs (tolerance 1e-4).

The float64 runs live in tests/golden; this checks the dtype our backends actually use on the CPU.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import require_golden
from tests.golden.runners.vggt_family import (
    build_model,
    streamvggt_stream_outputs,
    vggt_offline_outputs,
)
from tests.golden.util import compare_outputs, load_tensors, tolerances


def _fixture(name: str):
    folder = require_golden(name)
    return folder, json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("name,produce", [
    ("vggt_tiny", vggt_offline_outputs),
    ("streamvggt_tiny_stream_periter", lambda m, x: streamvggt_stream_outputs(m, x, "per_iteration")),
])
def test_float32_matches_float64_reference(name, produce) -> None:
    folder, cfg = _fixture(name)
    model = build_model(folder, cfg, torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    images = load_tensors(folder / "inputs.safetensors")["images"].float()
    got = produce(model, images)
    assert all(v.dtype in (torch.float32, torch.int64) for v in got.values())
    atol, rtol = tolerances(cfg, "float32_reimplementation")
    compare_outputs(got, load_tensors(folder / "outputs.safetensors"), atol=atol, rtol=rtol,
                    exact_keys=cfg["compare"].get("exact_keys", []))
