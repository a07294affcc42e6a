"""Preprocessing: the reference loader's geometry and colour rules, and the live fast path's bounded difference.

Byte equality with the reference itself is checked by the golden `geometry` fixture; these tests pin the rules
that fixture cannot show (sizes, portrait pad, small targets) and bound the fast path against the PIL path.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from recon.errors import ConfigError
from recon.models.preprocess import (
    load_and_preprocess_images,
    preprocess_frames,
    preprocess_pil_images,
    target_hw,
)

# Documented in docs/preprocessing.md: the two-pass 8-bit path stays within these of the PIL path.
MAX_LEVELS = 2.0
MEAN_LEVELS = 0.01
# Single float pass (pil_rounding=False): no intermediate clipping, so high-contrast edges differ more.
MAX_LEVELS_ONE_PASS = 24.0
MEAN_LEVELS_ONE_PASS = 0.5


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A frame with smooth shading, sensor noise and hard black/white edges (the worst case for bicubic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = 127 + 100 * (np.sin(xx / 13.0) * np.cos(yy / 7.0))[..., None] + rng.normal(0, 20, (h, w, 3))
    a[h // 3:h // 2, w // 4:w // 2] = 255
    a[h // 2:2 * h // 3, w // 2:3 * w // 4] = 0
    return np.clip(a, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("hw", "mode", "expected"),
    [
        ((480, 640), "crop", (392, 518)),
        ((720, 1280), "crop", (294, 518)),
        ((10, 148), "crop", (28, 518)),  # 2.5 rounds to even: 2 patches, not 3
        ((480, 640), "pad", (392, 518)),
        ((640, 480), "pad", (518, 392)),
        ((31, 23), "crop", (700, 518)),  # taller than the target: cropped later
        ((31, 23), "pad", (518, 378)),
    ],
)
def test_target_hw(hw: tuple[int, int], mode: str, expected: tuple[int, int]) -> None:
    assert target_hw(*hw, mode=mode) == expected


def test_small_targets_for_tiny_models() -> None:
    assert target_hw(480, 640, target_size=70, patch_size=14) == (56, 70)
    x = load_and_preprocess_images([Image.fromarray(_scene(48, 64))], target_size=70, patch_size=14)
    assert x.shape == (1, 3, 56, 70)
    y = preprocess_frames(_scene(48, 64), mode="pad", target_size=70, patch_size=14)
    assert y.shape == (1, 3, 70, 70)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        target_hw(480, 640, target_size=500, patch_size=14)
    with pytest.raises(ConfigError, match="mode"):
        target_hw(480, 640, mode="stretch")  # type: ignore[arg-type]


def test_crop_keeps_the_centre_rows() -> None:
    a = _scene(62, 46)
    full = np.asarray(Image.fromarray(a).resize((518, 700), Image.Resampling.BICUBIC))
    out = load_and_preprocess_images([Image.fromarray(a)])
    assert out.shape == (1, 3, 518, 518)
    top = (700 - 518) // 2
    want = torch.from_numpy(full[top:top + 518].copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(out[0], want)


def test_only_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200  # red, fully transparent: must become white
    la = np.zeros((20, 30, 2), np.uint8)
    la[..., 0] = 90  # grey, fully transparent: LA just drops alpha
    out = load_and_preprocess_images([Image.fromarray(rgba, "RGBA"), Image.fromarray(la, "LA")], mode="pad")
    assert torch.allclose(out[0], torch.ones_like(out[0]))
    content = out[1, :, 259 - 173:259 + 173]  # 518x345 -> 518x350 content centred in 518
    assert torch.all((content * 255).round() == 90)


def test_pad_mode_centres_on_white_and_mixed_shapes_pad_to_the_largest(caplog: pytest.LogCaptureFixture) -> None:
    wide, narrow = Image.fromarray(_scene(17, 45)), Image.fromarray(_scene(10, 148, seed=1))
    with caplog.at_level(logging.WARNING):
        results = preprocess_pil_images([wide, narrow], mode="crop")
    assert "different shapes" in caplog.text
    assert [r.pad for r in results] == [(0, 0, 0, 0), (84, 84, 0, 0)]
    out = load_and_preprocess_images([wide, narrow], mode="crop")
    assert out.shape == (2, 3, 196, 518)
    assert torch.all(out[1, :, :84] == 1.0) and torch.all(out[1, :, -84:] == 1.0)
    (padded,) = preprocess_pil_images([Image.fromarray(_scene(31, 23))], mode="pad")
    assert padded.pad == (0, 0, 70, 70) and padded.content.shape == (3, 518, 378)


def _levels(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a - b).abs() * 255
    return float(d.max()), float(d.mean())


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("hw", [(480, 640), (300, 451), (90, 120), (700, 400)])
def test_fast_path_is_within_the_documented_bound(hw: tuple[int, int], mode: str) -> None:
    a = _scene(*hw)
    ref = load_and_preprocess_images([Image.fromarray(a)], mode=mode)
    fast = preprocess_frames(a, mode=mode)
    assert fast.shape == ref.shape and fast.dtype == torch.float32
    worst, mean = _levels(fast, ref)
    assert worst <= MAX_LEVELS + 1e-3 and mean <= MEAN_LEVELS, (worst, mean)
    worst1, mean1 = _levels(preprocess_frames(a, mode=mode, pil_rounding=False), ref)
    assert worst1 <= MAX_LEVELS_ONE_PASS and mean1 <= MEAN_LEVELS_ONE_PASS, (worst1, mean1)
    assert worst1 > worst  # the two-pass rounding is what buys the tight bound


def test_fast_path_on_natural_images() -> None:
    for name in ("astronaut", "coffee", "rocket"):
        a = np.ascontiguousarray(getattr(data, name)()[..., :3])
        worst, mean = _levels(preprocess_frames(a), load_and_preprocess_images([Image.fromarray(a)]))
        assert worst <= MAX_LEVELS + 1e-3 and mean <= MEAN_LEVELS, (name, worst, mean)


def test_fast_path_batches_and_validates() -> None:
    frames = [_scene(48, 64, seed=s) for s in range(3)]
    batch = preprocess_frames(frames, target_size=70, patch_size=14)
    assert batch.shape == (3, 3, 56, 70)
    one = preprocess_frames(torch.from_numpy(frames[1]), target_size=70, patch_size=14)
    assert torch.equal(batch[1:2], one)
    with pytest.raises(ConfigError, match="uint8"):
        preprocess_frames(frames[0].astype(np.float32))
    with pytest.raises(ConfigError, match="share a size"):
        preprocess_frames([frames[0], _scene(50, 64)])
    with pytest.raises(ConfigError, match="HxWx3"):
        preprocess_frames(frames[0][..., :2])
