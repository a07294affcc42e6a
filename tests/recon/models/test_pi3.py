"""pi3: the full-size architecture's keys and shapes equal the published checkpoint's manifest; the window
model adapter produces what the LASER engine needs."""

from __future__ import annotations

import torch

from recon.models.pi3 import Pi3, build_window_model
from recon.models.weights import model_shapes, read_manifest
from tests.conftest import require_golden


def test_full_size_keys_and_shapes_match_manifest() -> None:
    manifest = read_manifest(require_golden("manifests/pi3_keys.tsv"))
    model = Pi3(device="meta")
    shapes = model_shapes(model)
    assert sorted(set(manifest) - set(shapes)) == []
    assert sorted(set(shapes) - set(manifest)) == []
    wrong = {k: (shapes[k], manifest[k]) for k in manifest if tuple(shapes[k]) != tuple(manifest[k])}
    assert wrong == {}
    assert len(manifest) == 1210


def test_tiny_window_model_outputs() -> None:
    model = build_window_model(model_config="tiny", device="cpu")
    images = torch.rand(3, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    pred = model.predict_window(images)
    assert pred.local_points.shape == (3, 28, 42, 3)
    assert pred.camera_poses.shape == (3, 4, 4) and pred.conf.shape == (3, 28, 42)
    assert bool((pred.local_points[..., 2] > 0).all())
    R = pred.camera_poses[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(3), atol=1e-5, rtol=0)
