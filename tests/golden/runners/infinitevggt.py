"""Runner for `infinitevggt_stream` fixtures (infinitevggt_tiny_pruned): InfiniteVGGT pruning, step by step.

The model is the StreamVGGT session of recon.models.streaming with `recon.memory.policies.DiversityPruningPolicy`
on the aggregator caches and the camera cache left unbounded (the published behaviour the fixture records). A
recorder attached to the policy collects, for every frame and global layer, the budget, the cache length before
and after pruning, the kept positions and token ids per head, the candidate scores and the mean score; all of it
is compared with the fixture (indices, budgets, lengths exactly; scores at the fixture's tolerance), together
with the dense outputs and poses of every frame.

The second run at `run.total_budget_unbounded_run` is compared with `outputs_unbounded.safetensors` and, for the
dense outputs, with the StreamVGGT streaming fixture the config names; it must also be bitwise equal to our own
unbounded StreamVGGT session, so the policy changes nothing while it does not prune.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from recon.memory.policies import DiversityPruningPolicy
from recon.models.vggt import VGGT
from tests.golden.runners.vggt_family import build_model, run_dtype, streamvggt_stream_outputs
from tests.golden.util import compare_outputs, load_tensors, tolerances

DENSE_KEYS = ("pts3d_in_other_view", "conf", "depth", "depth_conf", "camera_pose", "pose_enc_list")
# README "Tolerances": budget_prefloor and last_scores_* (float32 values) atol 1e-5; avg_score and candidate_scores
# 1e-9 for float64 code (the config's float64_reimplementation atol), 1e-5 for float32 code; dense outputs and
# poses from `compare.tolerances`; integer, bool and index keys exact (`compare.exact_keys`).
FLOAT32_STATE_KEYS = ("budget_prefloor", "last_scores_before", "last_scores_after")
FLOAT32_STATE_ATOL = 1e-5
FLOAT32_SCORE_ATOL = 1e-5


class PruneLog:
    """Collects the policy's recorder events into the fixture's key layout."""

    def __init__(self, frames: int, layers: int) -> None:
        shape = (frames, layers)
        self.t: dict[str, torch.Tensor] = {
            "budget": torch.zeros(shape, dtype=torch.int64),
            "budget_prefloor": torch.zeros(shape, dtype=torch.float32),
            "last_scores_before": torch.zeros(shape, dtype=torch.float32),
            "last_scores_after": torch.zeros(shape, dtype=torch.float32),
            "cache_len_before": torch.zeros(shape, dtype=torch.int64),
            "cache_len_after": torch.zeros(shape, dtype=torch.int64),
            "pruned": torch.zeros(shape, dtype=torch.bool),
            "avg_score": torch.full(shape, math.nan, dtype=torch.float64),
        }
        self.per_step: dict[str, torch.Tensor] = {}
        self.margin = math.inf

    def __call__(self, event: str, p: dict[str, Any]) -> None:
        f = p["frame"]
        if event == "frame":
            self.t["budget"][f] = torch.tensor(p["budget"])
            self.t["budget_prefloor"][f] = p["budget_prefloor"]
            self.t["last_scores_before"][f] = p["last_scores_before"]
        elif event == "frame_end":
            self.t["last_scores_after"][f] = p["last_scores_after"]
        elif event == "layer":
            layer = p["layer"]
            self.t["cache_len_before"][f, layer] = p["n_before"]
            self.t["cache_len_after"][f, layer] = p["n_after"]
            self.t["pruned"][f, layer] = p["pruned"]
            if p["pruned"]:
                self._pruned(f, layer, p)

    def _pruned(self, f: int, layer: int, p: dict[str, Any]) -> None:
        anchors = p["anchors"]
        scores = p["scores"].detach().cpu().double()
        keep_idx = p["keep_idx"].detach().cpu()
        self.t["avg_score"][f, layer] = float(p["avg_score"])
        key = f"prune.f{f}.l{layer}"
        self.per_step[f"{key}.kept_cache_pos"] = keep_idx.clone()
        self.per_step[f"{key}.kept_token_id"] = p["cache"].token_ids().cpu().clone()
        self.per_step[f"{key}.candidate_scores"] = scores.clone()
        kept = torch.zeros_like(scores, dtype=torch.bool)
        kept.scatter_(-1, keep_idx[..., anchors:] - anchors, True)
        if bool((~kept).any()) and bool(kept.any()):
            largest_kept = torch.where(kept, scores, -math.inf).amax(-1)
            smallest_evicted = torch.where(kept, math.inf, scores).amin(-1)
            self.margin = min(self.margin, float((smallest_evicted - largest_kept).min()))


def infinitevggt_stream_outputs(model: VGGT, images: torch.Tensor, total_budget: int) -> dict[str, torch.Tensor]:
    """Stream `images [B,F,3,H,W]` with diversity pruning at `total_budget`; outputs under the fixture's keys."""
    layers = model.config.aggregator.depth
    frames = images.shape[1]
    log = PruneLog(frames, layers)
    policy = DiversityPruningPolicy(total_budget, recorder=log)
    session = model.new_session(camera_cache="reference", policy=policy, track_token_ids=True)
    steps, cache_len, cache_ids = [], [], {}
    for f in range(frames):
        steps.append(session.step(images[:, f]))
        cache_len.append(torch.tensor(session.camera_cache_lengths()[0], dtype=torch.int64))
        for layer, cache in enumerate(session.memory):
            cache_ids[f"cache_token_id.f{f}.l{layer}"] = cache.token_ids().cpu().clone()
    P = int(log.t["cache_len_before"][0, 0])
    got = {
        "pts3d_in_other_view": torch.stack([s["world_points"] for s in steps]),
        "conf": torch.stack([s["world_points_conf"] for s in steps]),
        "depth": torch.stack([s["depth"] for s in steps]),
        "depth_conf": torch.stack([s["depth_conf"] for s in steps]),
        "camera_pose": torch.stack([s["pose_enc"] for s in steps]),
        "pose_enc_list": torch.stack([torch.stack(s["pose_enc_list"]) for s in steps]),
        "camera_cache_len": torch.stack(cache_len),
        "anchor_count": torch.tensor([policy.anchor_count(layer) for layer in range(layers)], dtype=torch.int64),
        "tokens_per_frame": torch.tensor(P, dtype=torch.int64),
        "selection_margin_min": torch.tensor(log.margin, dtype=torch.float64),
    }
    got.update(log.t)
    got.update(log.per_step)
    got.update(cache_ids)
    assert policy.host_reads == frames, "budgets must be read back once per frame, never per layer"
    return got


def _compare(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], cfg: dict, dtype: torch.dtype) -> None:
    """Every stored key: NaN/inf-aware for the score summaries, 1e-5 for the float32 state, the rest as usual."""
    float32_run = dtype == torch.float32
    atol, rtol = tolerances(cfg, "float32_reimplementation" if float32_run else None)
    score_atol = FLOAT32_SCORE_ATOL if float32_run else atol
    special = {"avg_score", "selection_margin_min", *FLOAT32_STATE_KEYS}
    for key in special & set(want):
        torch.testing.assert_close(got[key].double(), want[key].double(), atol=FLOAT32_STATE_ATOL
                                   if key in FLOAT32_STATE_KEYS else score_atol, rtol=0, equal_nan=True,
                                   msg=lambda m, key=key: f"{key}: {m}")
    plain_want = {k: v for k, v in want.items() if k not in special}
    score_keys = [k for k in plain_want if k.endswith(".candidate_scores")]
    compare_outputs({k: got[k] for k in score_keys if k in got}, {k: plain_want.pop(k) for k in score_keys},
                    atol=score_atol, rtol=0)
    compare_outputs(got, plain_want, atol=atol, rtol=rtol, exact_keys=cfg["compare"].get("exact_keys", []))
    extra = sorted(k for k in got if k.startswith("prune.") and k not in want)
    assert not extra, f"pruning steps the reference did not take: {extra[:5]}"


def run(folder: Path, cfg: dict) -> None:
    dtype = run_dtype(cfg)
    model = build_model(folder, cfg, dtype)
    images = load_tensors(folder / "inputs.safetensors")["images"].to(dtype)
    run_cfg = cfg["run"]

    got = infinitevggt_stream_outputs(model, images, int(run_cfg["total_budget"]))
    want = load_tensors(folder / "outputs.safetensors")
    _compare(got, want, cfg, dtype)

    unbounded_file = folder / "outputs_unbounded.safetensors"
    if not unbounded_file.is_file():
        return
    got_u = infinitevggt_stream_outputs(model, images, int(run_cfg["total_budget_unbounded_run"]))
    _compare(got_u, load_tensors(unbounded_file), cfg, dtype)
    dense = cfg.get("outputs_unbounded_dense", {})
    if dense.get("equal_to"):
        stream_want = load_tensors((folder / dense["equal_to"]).resolve())
        keys = [k for k in (*dense.get("keys", ()), "camera_pose", "pose_enc_list") if k in stream_want]
        _compare({k: got_u[k] for k in keys}, {k: stream_want[k] for k in keys}, cfg, dtype)
    ours = streamvggt_stream_outputs(model, images, "reference")
    for key in DENSE_KEYS:
        assert torch.equal(got_u[key], ours[key]), f"unbounded pruning run differs from our StreamVGGT on {key}"


PROCEDURES = {"infinitevggt_stream": run}
