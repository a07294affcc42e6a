"""Full-size architectures on the meta device against the official key/shape manifests (no multi-GB download).

vggt1b_keys.tsv lists the 1797 keys of VGGT-1B (identical for StreamVGGT's checkpoints.pth). Our model does not
build the track head, so after the registry's checkpoint filter the 1403 remaining keys must equal the model's
exactly, with equal shapes, and every key the filter removed must be one of the documented dropped prefixes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recon.errors import ConfigError
from recon.models.registry import build_model, get_weights_cfg
from recon.models.weights import compare_keys, model_shapes, read_manifest
from tests.conftest import require_golden


def _manifest(name: str) -> Path:
    return require_golden(f"manifests/{name}")


def _as_checkpoint(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The manifest as a state dict of meta tensors, so the real checkpoint filter can run on it."""
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize("name", ["vggt-1b", "vggt-1b-commercial", "streamvggt"])
def test_full_size_vggt_family_matches_the_manifest(name: str) -> None:
    cfg = get_weights_cfg(name)
    manifest = read_manifest(_manifest(cfg.manifest))
    assert len(manifest) == 1797
    assert sum(k.startswith("track_head.") for k in manifest) == 394

    model = build_model(name, device="meta")
    assert all(p.is_meta for p in model.parameters())
    ours = model_shapes(model)
    filtered = cfg.filter_fn(_as_checkpoint(manifest))

    report = compare_keys(ours, filtered)
    assert report.ok, report.describe()
    assert len(ours) == len(filtered) == 1403
    dropped = set(manifest) - set(filtered)
    assert len(dropped) == 394
    assert all(k.startswith(cfg.dropped_prefixes) for k in dropped), sorted(dropped)[:5]
    # Parameter count without the track head, from vggt_family.md §1.9.
    assert sum(p.numel() for p in model.parameters()) == 1_190_596_120


def test_filter_also_accepts_wrapped_checkpoints() -> None:
    cfg = get_weights_cfg("streamvggt")
    manifest = read_manifest(_manifest(cfg.manifest))
    wrapped = {"model": {f"module._orig_mod.{k}": v for k, v in _as_checkpoint(manifest).items()}, "epoch": 3}
    filtered = cfg.filter_fn(wrapped)
    assert compare_keys(model_shapes(build_model("streamvggt", device="meta")), filtered).ok


@pytest.mark.parametrize("name", ["pi3", "horizonstream"])
def test_other_families_against_their_manifests(name: str) -> None:
    cfg = get_weights_cfg(name)
    manifest = read_manifest(_manifest(cfg.manifest))
    assert manifest, f"{cfg.manifest} is empty"
    try:
        model = build_model(name, device="meta")
    except ConfigError as e:
        pytest.xfail(f"{name}: model not implemented yet ({e})")
    report = compare_keys(model_shapes(model), cfg.filter_fn(_as_checkpoint(manifest)))
    assert report.ok, report.describe()
