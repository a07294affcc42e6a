"""Runner for the pi3 fixture: float32 against `f32.*`, float64 (no float32 islands) against `f64.*` at 1e-9."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from recon.models.pi3 import Pi3, Pi3Config
from tests.golden.util import load_tensors

# README "Tolerances": float32 against f32.* at atol 1e-4 on local_points / points, 2e-5 on conf and poses; float64
# (no float32 islands) against f64.* at atol 1e-9.
F32_TOL = {"local_points": 1e-4, "points": 1e-4, "conf": 2e-5, "camera_poses": 2e-5}
F64_ATOL = 1e-9


def _float32_intermediate_atol(want: dict[str, torch.Tensor], ref: torch.Tensor) -> float:
    """The README gives no tolerance for the float32 intermediates. Float32 rounding grows with the values, so we ask
    each intermediate for the README's strictest output accuracy relative to that output's magnitude (2e-5 on
    conf / poses, 1e-4 on points of ~12), times the intermediate's own magnitude."""
    relative = min(tol / float(want[f"f32.{name}"].abs().max()) for name, tol in F32_TOL.items())
    return relative * float(ref.abs().max())


def _build(cfg: dict, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> Pi3:
    # The f64 reference run patched every `.float()` cast away, so float64 runs without float32 islands.
    model_cfg = replace(Pi3Config.from_fixture(cfg), float32_islands=dtype == torch.float32)
    model = Pi3(model_cfg)
    model.load_state_dict(weights, strict=True)
    return model.to(dtype).eval()


def run(folder: Path, cfg: dict) -> None:
    weights = load_tensors(folder / "weights.safetensors")
    images = load_tensors(folder / "inputs.safetensors")["images"]
    want = load_tensors(folder / "outputs.safetensors")
    for prefix, dtype in (("f64", torch.float64), ("f32", torch.float32)):
        model = _build(cfg, weights, dtype)
        inter: dict = {}
        with torch.no_grad():
            out = model(images.to(dtype), intermediates=inter)
        for key, ref in want.items():
            if not key.startswith(prefix + "."):
                continue
            name = key.split(".", 1)[1]
            if name.startswith("inter."):
                got = _intermediate(inter, name.split(".", 1)[1], model, images.to(dtype))
            else:
                got = out[name]
            if not ref.is_floating_point():
                assert torch.equal(got.to(ref.dtype), ref), key
                continue
            if prefix == "f64":
                atol = F64_ATOL
            else:
                atol = F32_TOL[name] if name in F32_TOL else _float32_intermediate_atol(want, ref)
            torch.testing.assert_close(got, ref.to(got.dtype), atol=atol, rtol=0, msg=key)


def _intermediate(inter: dict, name: str, model: Pi3, images: torch.Tensor) -> torch.Tensor:
    """Intermediates recorded by the forward pass, or recomputed for the encoder stages."""
    if name in inter:
        return inter[name]
    B, N, _, H, W = images.shape
    enc = model.encoder
    x = (images.reshape(B * N, 3, H, W) - model.image_mean) / model.image_std
    if name == "enc_pos_embed_interp":
        return enc.interpolate_pos_encoding((H // 14) * (W // 14), H, W, images.dtype)
    tokens = enc.patch_embed(x)
    tokens = torch.cat([enc.cls_token.expand(B * N, -1, -1), tokens], 1)
    tokens = tokens + enc.interpolate_pos_encoding(tokens.shape[1] - 1, H, W, tokens.dtype)
    tokens = torch.cat([tokens[:, :1], enc.register_tokens.expand(B * N, -1, -1), tokens[:, 1:]], 1)
    outs = []
    for blk in enc.blocks:
        tokens = blk(tokens)
        outs.append(tokens)
    if name.startswith("enc_block"):
        return outs[int(name[len("enc_block"):].split("_")[0])]
    normed = enc.norm(tokens)
    if name == "enc_cls_token":
        return normed[:, 0]
    if name == "enc_patch_tokens":
        return normed[:, 1 + enc.num_register_tokens:]
    raise KeyError(f"pi3 fixture intermediate {name!r} is not produced")


FIXTURE_PREFIXES = {"pi3": run}
