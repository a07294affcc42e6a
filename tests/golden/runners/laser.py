"""Runners for the LASER alignment fixtures (laser_sim3, laser_layers, laser_stream)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.align.depth_layers import LayerConfig, align_layers, build_window_layers
from recon.align.engine import LaserEngine
from recon.align.window_registration import apply_sim3_to_poses, confidence_mask, register_adjacent_windows
from recon.types import WindowPrediction
from tests.golden.util import float32_dot_bound, load_tensors

# Tolerances, each from the fixture README's "Tolerances" section unless a comment derives it:
# laser_sim3: scale rtol 1e-4, R atol 1e-5, t and poses atol 1e-4, iterates rtol 1e-4, masks and counts exact.
# laser_layers: IoUs atol 1e-6, scales / scale map / corrected points rtol 1e-5, labels, links, lengths exact.
# laser_stream: poses atol 1e-5, per-window s rtol 1e-4, depth rtol 1e-4, points atol 5e-4; masks, layers exact.
SIM3_T_ATOL = 1e-4


def run_sim3(folder: Path, cfg: dict) -> None:
    """Each case: masks exact, IRLS iteration count exact, scale/R/t/poses within the README's limits."""
    inputs = load_tensors(folder / "inputs.safetensors")
    outputs = load_tensors(folder / "outputs.safetensors")
    overlap, p = cfg["overlap"], cfg["top_conf_percentile"]
    for case in [c["name"] for c in cfg["cases"]]:
        x = {k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(case + ".")}
        want = {k.split(".", 1)[1]: v for k, v in outputs.items() if k.startswith(case + ".")}
        prev_mask, prev_thr = confidence_mask(x["prev_conf"], p)
        cur_mask, cur_thr = confidence_mask(x["cur_conf"], p)
        assert torch.equal(prev_thr, want["prev_conf_thr"]) and torch.equal(cur_thr, want["cur_conf_thr"]), case
        assert torch.equal(prev_mask, want["prev_mask"]) and torch.equal(cur_mask, want["cur_mask"]), case
        valid = prev_mask[-overlap:] & cur_mask[:overlap]
        assert torch.equal(valid, want["overlap_valid_mask"]), case
        reg = register_adjacent_windows(
            x["prev_local_points"][-overlap:], x["cur_local_points"][:overlap],
            x["prev_camera_poses"][-overlap:], x["cur_camera_poses"][:overlap], valid,
        )
        assert reg.irls.num_iters == int(want["irls_num_iters"]), case
        torch.testing.assert_close(reg.irls.iterates, want["irls_iterates"], rtol=1e-4, atol=0)
        torch.testing.assert_close(reg.scale, want["scale"], rtol=1e-4, atol=0)
        torch.testing.assert_close(reg.R, want["R"], rtol=0, atol=1e-5)
        torch.testing.assert_close(reg.t, want["t"], rtol=0, atol=1e-4)
        poses = apply_sim3_to_poses(x["cur_camera_poses"], reg.scale, reg.R, reg.t)
        torch.testing.assert_close(poses, want["registered_cur_camera_poses"], rtol=0, atol=1e-4)


FIXTURE_PREFIXES = {"laser_sim3": run_sim3}


def _sorted_rows(table: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Rows of an index table (and matching value columns) in lexicographic order, stable."""
    order = np.lexsort(table.T[::-1]) if len(table) else np.arange(0)
    return (table[order], *(v[order] for v in values))


def unproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """LASER's unprojection: integer pixel indices, no +0.5."""
    h, w = depth.shape[-2:]
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    x = (cols - K[0, 2]) * depth / K[0, 0]
    y = (rows - K[1, 2]) * depth / K[1, 1]
    return np.stack([x, y, depth], axis=-1).astype(np.float32)


def run_layers(folder: Path, cfg: dict) -> None:
    """Segments, layers, links, caches exact; IoUs atol 1e-6; scales, scale map, corrected points rtol 1e-5."""
    x = {k: v.numpy() for k, v in load_tensors(folder / "inputs.safetensors").items()}
    want = {k: v.numpy() for k, v in load_tensors(folder / "outputs.safetensors").items()}
    lcfg = LayerConfig(
        felz_scale=cfg["felzenszwalb"]["scale"], felz_sigma=cfg["felzenszwalb"]["sigma"],
        felz_min_size=cfg["felzenszwalb"]["min_size"], merge_ratio=cfg["merge"]["depth_merge_thresh"],
        intra_iou=cfg["iou"]["intra_window"], cross_iou=cfg["iou"]["cross_window"],
    )
    built = {}
    for side in ("prev", "cur"):
        mask, thr = confidence_mask(torch.from_numpy(x[f"{side}_conf"]), cfg["top_conf_percentile"])
        assert thr.item() == want[f"{side}_conf_thr"].item() and np.array_equal(mask.numpy(), want[f"{side}_mask"])
        layers = build_window_layers(x[f"{side}_depth"], mask.numpy(), lcfg)
        assert layers.merge_thresh == want[f"{side}_merge_thresh"], side
        np.testing.assert_array_equal(layers.felz_labels, want[f"{side}_felz_labels"], err_msg=side)
        np.testing.assert_array_equal(layers.layers, want[f"{side}_layers"], err_msg=side)
        table = np.array([e[:3] for e in layers.intra_edges], dtype=np.int32).reshape(-1, 3)
        ious = np.array([e[3] for e in layers.intra_edges], dtype=np.float32)
        got_t, got_iou = _sorted_rows(table, ious)
        ref_t, ref_iou = _sorted_rows(want[f"{side}_intra_edges"], want[f"{side}_intra_edge_iou"])
        np.testing.assert_array_equal(got_t, ref_t, err_msg=side)
        np.testing.assert_allclose(got_iou, ref_iou, atol=1e-6, rtol=0)
        built[side] = layers
    res = align_layers(x["prev_depth"], built["prev"], x["cur_depth"], built["cur"], cfg["overlap"], lcfg)
    table = np.array([e[:3] for e in res.cross_edges], dtype=np.int32)
    got = _sorted_rows(table, *(np.array([e[i] for e in res.cross_edges]) for i in (3, 4, 5, 6)))
    ref = _sorted_rows(want["cross_edges"], want["cross_edge_iou"], want["cross_edge_scale"],
                       want["cross_edge_inter_pixels"], want["cross_edge_irls_iterates"])
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_allclose(got[1], ref[1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-5)
    np.testing.assert_array_equal(got[3], ref[3])
    np.testing.assert_allclose(got[4], ref[4], rtol=1e-5)
    rows = [(f, ly, kind, iou, s) for (f, ly), entries in res.cache.items() for iou, s, kind in entries]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))  # stable: append order kept within a key
    ref_order = np.lexsort(want["cur_cache"].T[::-1])
    np.testing.assert_array_equal(np.array([r[:3] for r in rows], dtype=np.int32), want["cur_cache"][ref_order])
    np.testing.assert_allclose([r[3] for r in rows], want["cur_cache_iou"][ref_order], atol=1e-6, rtol=0)
    np.testing.assert_allclose([r[4] for r in rows], want["cur_cache_scale"][ref_order], rtol=1e-5)
    info = np.array([(f, ly, int((built["cur"].layers[f] == ly).sum()), len(res.cache.get((f, ly), [])))
                     for (f, ly) in sorted(res.layer_scale)], dtype=np.int32)
    got_info, got_scale = _sorted_rows(info, np.array([res.layer_scale[k] for k in sorted(res.layer_scale)]))
    ref_info, ref_scale = _sorted_rows(want["cur_layer_info"], want["cur_layer_scale"])
    np.testing.assert_array_equal(got_info, ref_info)
    np.testing.assert_allclose(got_scale, ref_scale, rtol=1e-5)
    np.testing.assert_allclose(res.scale_map, want["scale_map"], rtol=1e-5)
    corrected = unproject(x["cur_depth"], x["K"]) * res.scale_map[..., None]
    np.testing.assert_allclose(corrected, want["corrected_local_points"], rtol=1e-5, atol=0)


FIXTURE_PREFIXES["laser_layers"] = run_layers


def _run_engine(inputs: dict[str, torch.Tensor], cfg: dict, depth_refine: bool) -> list:
    engine = LaserEngine(cfg["window_size"], cfg["overlap"], top_conf_percentile=cfg["top_conf_percentile"],
                         depth_refine=depth_refine)
    out = []
    for k in range(len(cfg["windows"])):
        pred = WindowPrediction([int(f) for f in inputs[f"window{k}.frames"]], inputs[f"window{k}.local_points"],
                                inputs[f"window{k}.camera_poses"], inputs[f"window{k}.conf"])
        out.append(engine.register(pred))
    return out, engine


def _sim3_t_bound(got, want: dict[str, torch.Tensor], key: str, cur_poses: torch.Tensor, overlap: int
                  ) -> torch.Tensor:
    """Allowance for the stream's Sim(3) translation, which the README gives no tolerance for.

    t = centre_prev - s R centre_cur (`kabsch_from_poses`), so our s and R, each checked at the README's own
    tolerance, move t by |dR| (s |centre_cur|) + |ds| (|R| |centre_cur|); the float32 product adds 2 gamma_3 of
    its terms. On top: laser_sim3's t atol 1e-4 (|t| grows with the chained centres here, up to ~5).
    """
    centre = cur_poses[:overlap, :3, 3].double().mean(0).abs()
    s_ref, R_ref = want[f"{key}_scale"].double(), want[f"{key}_R"].double()
    dR = (got.R.double() - R_ref).abs()
    ds = (got.scale.double() - s_ref).abs()
    terms = R_ref.abs() @ (s_ref * centre)
    return SIM3_T_ATOL + dR @ (s_ref * centre) + ds * (R_ref.abs() @ centre) + float32_dot_bound(terms, 3)


def _assert_within(got: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    diff = (got.double() - ref.double()).abs()
    assert bool((diff <= bound).all()), f"{what}: diff {diff.max():.3e} > bound {bound.min():.3e}"


def run_stream(folder: Path, cfg: dict) -> None:
    """Whole engine with and without LSA: poses, points, depth, masks, K and per-window records."""
    inputs = load_tensors(folder / "inputs.safetensors")
    want = load_tensors(folder / "outputs.safetensors")
    windows, engine = _run_engine(inputs, cfg, depth_refine=True)
    # README step 2: K_ref is exactly 60/60/42/28 (medians pick one pixel's ratio).
    assert torch.equal(engine.K_ref, want["K_ref"]), (engine.K_ref, want["K_ref"])
    frames = sorted((f for w in windows for f in w.frames), key=lambda f: f.frame)
    assert [f.frame for f in frames] == list(range(cfg["num_frames"]))
    torch.testing.assert_close(torch.stack([f.T_world_cam for f in frames]), want["camera_poses"], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack([f.depth for f in frames]), want["depth"], rtol=1e-4, atol=0)
    torch.testing.assert_close(torch.stack([f.world_points for f in frames]), want["points"], rtol=0, atol=5e-4)
    assert torch.equal(torch.stack([f.mask for f in frames]), want["mask"])
    # Per-frame K (README step 7, no tolerance given): the median of (col - cx) z / x over pixels whose x and z carry
    # the same scale factors, so each ratio is fx up to the float32 rounding of a few operations (8 of them:
    # 2 gamma_8 relative); the median of such ratios stays inside that band.
    K_got, K_ref = torch.stack([f.K for f in frames]), want["intrinsic"]
    _assert_within(K_got, K_ref, float32_dot_bound(K_ref.abs(), 8), "intrinsic")
    for k, w in enumerate(windows):
        assert torch.equal(w.conf_thr, want[f"window{k}.conf_thr"]), k
        np.testing.assert_array_equal(w.layers.layers, want[f"window{k}.layers"].numpy(), err_msg=f"window {k}")
        if k == 0:
            continue
        assert int(w.sim3.overlap_mask.sum()) == int(want[f"window{k}.overlap_valid_pixels"])
        torch.testing.assert_close(w.sim3.scale, want[f"window{k}.sim3_scale"], rtol=1e-4, atol=0)
        torch.testing.assert_close(w.sim3.R, want[f"window{k}.sim3_R"], rtol=0, atol=1e-5)
        bound = _sim3_t_bound(w.sim3, want, f"window{k}.sim3", inputs[f"window{k}.camera_poses"], cfg["overlap"])
        _assert_within(w.sim3.t, want[f"window{k}.sim3_t"], bound, f"window{k}.sim3_t")
        torch.testing.assert_close(w.sim3.irls.iterates, want[f"window{k}.irls_iterates"], rtol=1e-4, atol=0)
        index = want[f"window{k}.layer_scale_index"].tolist()
        got = torch.tensor([float(w.layer_scale[(f, ly)]) for f, ly in index])
        assert len(w.layer_scale) == len(index), k
        # Layer factors are depth ratios (README: depth rtol 1e-4): 1/|r| IRLS weights amplify summation order.
        torch.testing.assert_close(got, want[f"window{k}.layer_scale"], rtol=1e-4, atol=0)
    nolsa, _ = _run_engine(inputs, cfg, depth_refine=False)
    poses = torch.stack([f.T_world_cam for f in sorted((f for w in nolsa for f in w.frames), key=lambda f: f.frame)])
    torch.testing.assert_close(poses, want["nolsa.camera_poses"], rtol=0, atol=1e-5)
    for k, w in enumerate(nolsa[1:], start=1):
        torch.testing.assert_close(w.sim3.scale, want[f"nolsa.window{k}.sim3_scale"], rtol=1e-4, atol=0)
        torch.testing.assert_close(w.sim3.R, want[f"nolsa.window{k}.sim3_R"], rtol=0, atol=1e-5)
        bound = _sim3_t_bound(w.sim3, want, f"nolsa.window{k}.sim3", inputs[f"window{k}.camera_poses"],
                              cfg["overlap"])
        _assert_within(w.sim3.t, want[f"nolsa.window{k}.sim3_t"], bound, f"nolsa.window{k}.sim3_t")


FIXTURE_PREFIXES["laser_stream"] = run_stream
