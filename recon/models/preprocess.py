"""Image preprocessing for the VGGT family: the reference loader's exact behaviour, and a fast path for live frames.

Two paths, one geometry (see docs/preprocessing.md):

- `load_and_preprocess_images` / `preprocess_pil_images` reproduce facebookresearch/vggt@44b3afb
  `load_and_preprocess_images` byte for byte (the golden `geometry` fixture checks it): RGBA composited on white,
  PIL BICUBIC resize to width `target_size` with the height rounded to a multiple of `patch_size` by Python's
  `round` (halves go to even: a 148x10 image becomes 518x28, not 518x42), centre crop of heights above
  `target_size` ("crop" mode) or centring on a white square ("pad" mode), white padding of mixed shapes.
  Use it for files and offline evaluation, where matching the published numbers matters.
- `preprocess_frames` takes live uint8 HxWx3 frames (numpy or torch, any device) and resizes with
  `torch.nn.functional.interpolate(mode="bicubic", antialias=True)`, PIL's kernel (a = -0.5, widened when
  shrinking), without PIL and without a host round trip when the frames are already on the GPU. Its difference
  from the PIL path is measured in docs/preprocessing.md and bounded by a test.

Output of both: float32 [N,3,H,W] in [0,1]. ImageNet normalisation happens inside the models, not here.
Sizes are parameters (`target_size=518`, `patch_size=14` by default) so tiny test models can use small inputs.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from recon.errors import ConfigError, SequenceError

logger = logging.getLogger(__name__)

Mode = Literal["crop", "pad"]
ImageSource = str | Path | bytes | Image.Image

DEFAULT_TARGET_SIZE = 518
DEFAULT_PATCH_SIZE = 14


@dataclass(frozen=True)
class PreprocessedImage:
    """One preprocessed image before it is stacked.

    Attributes:
        content: uint8 [3,h,w], the resized (and cropped) pixels; the float image is content / 255.
        pad: (top, bottom, left, right) rows/columns of white (1.0) around the content in the final tensor.
    """

    content: torch.Tensor
    pad: tuple[int, int, int, int]


def _round_to_patch(value: float, patch_size: int) -> int:
    """Nearest multiple of `patch_size`, with Python's round-half-to-even, exactly as the reference does."""
    return round(value / patch_size) * patch_size


def _check_sizes(mode: str, target_size: int, patch_size: int) -> None:
    """Reject configurations the models cannot consume (the patch grid must tile the image)."""
    if mode not in ("crop", "pad"):
        raise ConfigError(f"preprocess mode must be 'crop' or 'pad', got {mode!r}")
    if patch_size <= 0 or target_size <= 0 or target_size % patch_size:
        raise ConfigError(
            f"target_size ({target_size}) must be a positive multiple of patch_size ({patch_size})"
        )


def target_hw(height: int, width: int, mode: Mode = "crop", target_size: int = DEFAULT_TARGET_SIZE,
              patch_size: int = DEFAULT_PATCH_SIZE) -> tuple[int, int]:
    """Resize target (h, w) for an input of `height` x `width`, before any crop or padding.

    crop: width -> target_size, height scaled and rounded to the patch grid (it may exceed target_size and is then
    centre-cropped). pad: the longer side -> target_size, the other scaled and rounded. A 640x480 frame gives
    518x392 (37x28 patches) in both modes.
    """
    _check_sizes(mode, target_size, patch_size)
    if mode == "pad" and height > width:
        return target_size, _round_to_patch(width * (target_size / height), patch_size)
    return _round_to_patch(height * (target_size / width), patch_size), target_size


def open_rgb(source: ImageSource) -> Image.Image:
    """Open an image as RGB; only mode RGBA is alpha-composited on white first.

    Other modes with alpha (LA, PA) are converted by PIL, which drops the alpha: that is the reference behaviour
    and the fixture's C image (grey + alpha) records it.
    """
    try:
        if isinstance(source, Image.Image):
            img = source
        elif isinstance(source, bytes | bytearray):
            img = Image.open(io.BytesIO(source))
        else:
            img = Image.open(source)
        img.load()
    except (OSError, ValueError) as e:
        name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
        raise SequenceError(f"cannot read image {name}: {e}") from e
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def _centre_pad(h_pad: int, w_pad: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) that centre content; the odd pixel goes bottom/right."""
    return h_pad // 2, h_pad - h_pad // 2, w_pad // 2, w_pad - w_pad // 2


def preprocess_pil_images(
    sources: Sequence[ImageSource], mode: Mode = "crop", target_size: int = DEFAULT_TARGET_SIZE,
    patch_size: int = DEFAULT_PATCH_SIZE,
) -> list[PreprocessedImage]:
    """The reference loader's per-image results (uint8 content and final white padding), without stacking.

    Kept separate from `load_and_preprocess_images` so tests can compare bytes rather than floats, and so callers
    can keep uint8 frames (4x smaller) until the model needs them.
    """
    _check_sizes(mode, target_size, patch_size)
    if not sources:
        raise ConfigError("no images to preprocess")
    contents: list[torch.Tensor] = []
    pads: list[tuple[int, int, int, int]] = []
    for source in sources:
        img = open_rgb(source)
        width, height = img.size
        new_h, new_w = target_hw(height, width, mode, target_size, patch_size)
        if new_h <= 0 or new_w <= 0:
            raise ConfigError(f"image of {width}x{height} is too thin for a {target_size}/{patch_size} grid")
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        content = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        pad = (0, 0, 0, 0)
        if mode == "crop" and new_h > target_size:
            top = (new_h - target_size) // 2
            content = content[:, top:top + target_size, :].contiguous()
        elif mode == "pad":
            pad = _centre_pad(target_size - new_h, target_size - new_w)
        contents.append(content)
        pads.append(pad)
    sizes = [(c.shape[1] + p[0] + p[1], c.shape[2] + p[2] + p[3]) for c, p in zip(contents, pads, strict=True)]
    if len(set(sizes)) > 1:
        logger.warning("images have different shapes %s; padding them with white to the largest", sorted(set(sizes)))
        max_h = max(s[0] for s in sizes)
        max_w = max(s[1] for s in sizes)
        new_pads = []
        for (h, w), (t, b, left, r) in zip(sizes, pads, strict=True):
            et, eb, el, er = _centre_pad(max_h - h, max_w - w)
            new_pads.append((t + et, b + eb, left + el, r + er))
        pads = new_pads
    return [PreprocessedImage(c, p) for c, p in zip(contents, pads, strict=True)]


def stack_preprocessed(images: Sequence[PreprocessedImage]) -> torch.Tensor:
    """Float32 [N,3,H,W] in [0,1]: each content / 255 placed inside its white padding."""
    first = images[0]
    H = first.content.shape[1] + first.pad[0] + first.pad[1]
    W = first.content.shape[2] + first.pad[2] + first.pad[3]
    out = torch.ones(len(images), 3, H, W, dtype=torch.float32)
    for i, im in enumerate(images):
        top, bottom, left, right = im.pad
        out[i, :, top:H - bottom, left:W - right] = im.content.to(torch.float32) / 255
    return out


def load_and_preprocess_images(
    sources: Sequence[ImageSource], mode: Mode = "crop", target_size: int = DEFAULT_TARGET_SIZE,
    patch_size: int = DEFAULT_PATCH_SIZE,
) -> torch.Tensor:
    """Images (paths, encoded bytes or PIL images) -> float32 [N,3,H,W] in [0,1], equal to the reference loader."""
    return stack_preprocessed(preprocess_pil_images(sources, mode, target_size, patch_size))


def _frames_to_tensor(frames: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
                      device: torch.device | str | None) -> torch.Tensor:
    """uint8 [N,H,W,3] (or one HxWx3 frame, or a list of equal-size frames) as a tensor on `device`."""
    def as_tensor(f: np.ndarray | torch.Tensor) -> torch.Tensor:
        # Frames from PIL/decoders are often read-only arrays; torch warns on those, so copy them once.
        if isinstance(f, np.ndarray) and not f.flags.writeable:
            f = f.copy()
        return torch.as_tensor(f)

    if isinstance(frames, list | tuple):
        tensors = [as_tensor(f) for f in frames]
        shapes = sorted({tuple(t.shape) for t in tensors})
        if len(shapes) > 1:
            raise ConfigError(f"live frames in one batch must share a size, got {shapes}")
        x = torch.stack(tensors)
    else:
        x = as_tensor(frames)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ConfigError(f"live frames must be HxWx3 (or NxHxWx3) RGB, got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ConfigError(f"live frames must be uint8, got {x.dtype}")
    return x.to(device) if device is not None else x


def _resize_like_pil(img: torch.Tensor, new_h: int, new_w: int, pil_rounding: bool) -> torch.Tensor:
    """Antialiased bicubic resize of float [N,3,H,W] on the 0..255 scale.

    PIL resizes horizontally first, stores that pass as 8-bit (clipped and rounded), then resizes vertically.
    Doing the same with two separable torch passes takes the worst pixel from 8 levels to 1 level of difference:
    the clipping between passes matters at high-contrast edges, where the bicubic overshoot is large.
    """
    height, width = img.shape[-2:]
    if not pil_rounding:
        if (new_h, new_w) == (height, width):
            return img
        return F.interpolate(img, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    if new_w != width:
        img = F.interpolate(img, size=(height, new_w), mode="bicubic", antialias=True, align_corners=False)
        img = img.clamp_(0.0, 255.0).round_()
    if new_h != height:
        img = F.interpolate(img, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        img = img.clamp_(0.0, 255.0).round_()
    return img


def preprocess_frames(
    frames: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
    mode: Mode = "crop",
    target_size: int = DEFAULT_TARGET_SIZE,
    patch_size: int = DEFAULT_PATCH_SIZE,
    device: torch.device | str | None = None,
    pil_rounding: bool = True,
) -> torch.Tensor:
    """Fast path for live RGB frames: uint8 [N,H,W,3] or HxWx3 -> float32 [N,3,H,W] in [0,1] on `device`.

    Same output geometry as the PIL path for the same input size. The resize is torch's antialiased bicubic
    (PIL's kernel, a = -0.5, widened when shrinking) in float32, done for the whole batch on the frames' device, so
    GPU frames never visit the host. With `pil_rounding` (default) the two separable passes are rounded to 8 bits
    like PIL's, which keeps every pixel within 1/255 of the PIL path on natural images (figures and the test bound
    in docs/preprocessing.md); without it one float pass is used and the output is not quantised.
    """
    _check_sizes(mode, target_size, patch_size)
    x = _frames_to_tensor(frames, device)
    n, height, width, _ = x.shape
    new_h, new_w = target_hw(height, width, mode, target_size, patch_size)
    if new_h <= 0 or new_w <= 0:
        raise ConfigError(f"frame of {width}x{height} is too thin for a {target_size}/{patch_size} grid")
    img = _resize_like_pil(x.permute(0, 3, 1, 2).to(torch.float32), new_h, new_w, pil_rounding)
    img = img.clamp(0.0, 255.0) / 255.0
    if mode == "crop" and new_h > target_size:
        top = (new_h - target_size) // 2
        img = img[:, :, top:top + target_size, :]
    elif mode == "pad" and (new_h < target_size or new_w < target_size):
        top, bottom, left, right = _centre_pad(target_size - new_h, target_size - new_w)
        img = F.pad(img, (left, right, top, bottom), mode="constant", value=1.0)
    return img.contiguous()
