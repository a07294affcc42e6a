"""Runner for the `geometry` fixture: pose encoding both ways, depth unprojection, image preprocessing.

Every stored output is recomputed with recon's own functions and compared at its dtype's tolerance from
`compare.tolerances` (float64 1e-12, float32 1e-5/1e-6); `compare.exact_keys` (preprocessing bytes, pads, shapes,
the valid mask) must be equal.

Two float64 outputs hold float32 arithmetic (README §3): `closed_form_inverse_se3` computes -R^T t in the float32
input dtype and stores it in a float64 4x4, and the world points add that translation. Its last bit depends on the
BLAS kernel numpy's OpenBLAS picks for the CPU (an AVX-512 kernel rounds differently from the Haswell one the
fixture was made with), so those entries get the float32 dot-product bound on top of the float64 tolerance.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recon.geometry.pose_encoding import (
    closed_form_inverse_se3,
    extri_intri_to_pose_encoding,
    extrinsic_depth_to_points,
    mat_to_quat_xyzw,
    pose_encoding_to_extri_intri,
    quat_xyzw_to_mat,
    unproject_depth_map_to_point_map,
)
from recon.models.preprocess import preprocess_pil_images, stack_preprocessed
from tests.golden.util import compare_outputs, float32_dot_bound, is_exact, load_tensors, tolerances


def _pose_outputs(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}
    hw = x["pose.image_size_hw"]
    got["pose.extrinsics"], got["pose.intrinsics"] = pose_encoding_to_extri_intri(x["pose.enc"], hw)
    got["pose_f32.extrinsics"], got["pose_f32.intrinsics"] = pose_encoding_to_extri_intri(x["pose.enc"].float(), hw)
    got["pose.quat_to_mat"] = quat_xyzw_to_mat(x["pose.enc"][..., 3:7])
    hw = x["enc.image_size_hw"]
    got["enc.pose_enc"] = extri_intri_to_pose_encoding(x["enc.extrinsics"], x["enc.intrinsics"], hw)
    got["enc.mat_to_quat"] = mat_to_quat_xyzw(x["enc.extrinsics"][..., :3, :3])
    got["enc.roundtrip_extrinsics"], got["enc.roundtrip_intrinsics"] = pose_encoding_to_extri_intri(
        got["enc.pose_enc"], hw
    )
    return got


def _unproject_outputs(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    depth = x["unproject.depth"].numpy()
    extr = x["unproject.extrinsics"].numpy()
    intr = x["unproject.intrinsics"].numpy()
    _, cam0, valid0 = extrinsic_depth_to_points(depth[0, ..., 0], extr[0], intr[0])
    return {
        "unproject.world_points": torch.from_numpy(unproject_depth_map_to_point_map(depth, extr, intr)),
        "unproject.frame0.cam_points": torch.from_numpy(cam0),
        "unproject.frame0.valid_mask": torch.from_numpy(valid0),
        "unproject.cam_from_world_inverse": torch.from_numpy(closed_form_inverse_se3(extr)),
        "unproject.cam_from_world_inverse_torch": closed_form_inverse_se3(x["unproject.extrinsics"]),
    }


def _float32_rounding_bounds(x: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-element allowance for the float64 outputs that carry the float32 product -R^T t (README §3).

    The inverse's top-right column is a 3-term float32 dot product per entry: bound 2*gamma_3 * (|R|^T |t|). The
    rest of the inverse (R^T, the bottom row) is copied exactly. A world point is float32 camera point (exact,
    rounded once from float64) times R^T (exact) summed in float64, plus that translation: the same bound per
    frame and axis; the float64 sum itself stays inside the float64 tolerance.
    """
    extr = x["unproject.extrinsics"].double()
    R, t = extr[:, :3, :3], extr[:, :3, 3]
    t_bound = float32_dot_bound(torch.einsum("sji,sj->si", R.abs(), t.abs()), 3)  # [S, 3]
    inverse = torch.zeros_like(want["unproject.cam_from_world_inverse"])
    inverse[:, :3, 3] = t_bound
    world = t_bound[:, None, None, :].expand(want["unproject.world_points"].shape)
    return {"unproject.cam_from_world_inverse": inverse, "unproject.world_points": world}


def _preprocess_outputs(x: dict[str, torch.Tensor], cfg: dict, want: dict[str, torch.Tensor]) -> dict:
    got: dict[str, torch.Tensor] = {}
    for call in cfg["preprocess_calls"]:
        name = call["name"]
        sources = [x[f"png.{image}"].numpy().tobytes() for image in call["images"]]
        results = preprocess_pil_images(sources, mode=call["mode"])
        stacked = stack_preprocessed(results)
        got[f"preprocess.{name}.shape"] = torch.tensor(stacked.shape, dtype=torch.int64)
        for i, res in enumerate(results):
            got[f"preprocess.{name}.content.{i}"] = res.content
            got[f"preprocess.{name}.pad.{i}"] = torch.tensor(res.pad, dtype=torch.int64)
        # The returned float tensor itself must equal the README's reconstruction from the stored bytes and pads.
        shape = want[f"preprocess.{name}.shape"].tolist()
        expected = torch.ones(*shape)
        H, W = shape[2], shape[3]
        for i in range(shape[0]):
            top, bottom, left, right = want[f"preprocess.{name}.pad.{i}"].tolist()
            expected[i, :, top:H - bottom, left:W - right] = want[f"preprocess.{name}.content.{i}"].float() / 255
        assert stacked.dtype == torch.float32 and torch.equal(stacked, expected), f"preprocess {name}: float tensor"
    return got


def run(folder: Path, cfg: dict) -> None:
    """Recompute every output of the geometry fixture and compare dtype by dtype."""
    x = load_tensors(folder / "inputs.safetensors")
    want = load_tensors(folder / "outputs.safetensors")
    got = {**_pose_outputs(x), **_unproject_outputs(x), **_preprocess_outputs(x, cfg, want)}
    exact = cfg["compare"]["exact_keys"]
    patterns = [k.rstrip("*").rstrip(".") for k in exact]
    for key, ref in want.items():
        assert key in got, f"output {key} not produced"
        if ref.is_floating_point() and not is_exact(key, patterns):
            assert got[key].dtype == ref.dtype, f"{key}: dtype {got[key].dtype}, reference {ref.dtype}"
    bounds = _float32_rounding_bounds(x, want)
    for dtype_name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        atol, rtol = tolerances(cfg, dtype_name)
        keys = [k for k, v in want.items() if v.dtype == dtype and not is_exact(k, patterns)]
        compare_outputs({k: got[k] for k in keys}, {k: want[k] for k in keys}, atol=atol, rtol=rtol, bounds=bounds)
    exact_keys = [k for k, v in want.items() if is_exact(k, patterns) or not v.is_floating_point()]
    compare_outputs({k: got[k] for k in exact_keys}, {k: want[k] for k in exact_keys}, atol=0.0, rtol=0.0,
                    exact_keys=exact_keys)


PROCEDURES = {"geometry": run}
