"""Runners for the LingBot-Map fixtures (`lingbot_stream_sdpa`, `lingbot_windowed_sdpa`; README_lingbot.md).

The model is built from `config.json["model"]`, `weights.safetensors` loaded strictly, the aggregator run in the
fixture's `run.aggregator_dtype` (float64) and the heads in float32 as the reference runs them; with the float32
tolerance set (RECON_GOLDEN_TOLERANCE=float32_reimplementation) everything runs in float32. Every size, index and
schedule is read from config.json. Tolerances come from `compare.tolerances`: float64 aggregator outputs at
`aggregated_tokens_float64`, head outputs at `head_outputs_float32_heads`; `exact_keys` exactly.

The stream fixture holds two runs of one schedule: `outputs.safetensors` with the reference SDPA path's behaviour
(non-keyframes stored: `keyframe_semantics="store"`) and `outputs_flashinfer_semantics.safetensors` with the default
FlashInfer behaviour (`"skip"`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from recon.models.lingbot import LingBot, config_from_fixture
from recon.models.lingbot_session import LingBotStreamConfig
from recon.models.lingbot_windows import LingBotWindowConfig, run_windowed
from tests.golden.util import TOLERANCE_SET, compare_outputs, load_tensors, tolerances

PER_LAYER_KEYS = ("step_cache_frames", "step_special_frames", "step_cache_tokens")
SEMANTICS_FILES = {"store": "outputs.safetensors", "skip": "outputs_flashinfer_semantics.safetensors"}


@contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny LingBot models on one torch thread (the fixtures were made on one).

    They are all per-op overhead (24 rounds of tiny blocks): on a loaded 2-core machine two OpenMP threads made a
    24-frame stream 30x slower (15 s against 0.5 s measured), one thread costs nothing.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _float32_run() -> bool:
    return TOLERANCE_SET.startswith("float32")


def build_model(folder: Path, cfg: dict) -> tuple[LingBot, torch.dtype]:
    """The fixture's model with its weights loaded strictly; the aggregator in the run dtype, heads in float32."""
    model = LingBot(config_from_fixture(cfg["model"]))
    model.load_state_dict(load_tensors(folder / "weights.safetensors"), strict=True)
    dtype = torch.float32 if _float32_run() else getattr(torch, cfg["run"].get("aggregator_dtype", "float64"))
    model.aggregator.to(dtype)
    return model.eval(), dtype


def stream_config(cfg: dict, semantics: str, keep_tokens: bool = True) -> LingBotStreamConfig:
    """The reference's memory knobs from config.json, unbounded where the reference is."""
    m, run = cfg["model"], cfg["run"]
    trajectory = "none" if not m.get("kv_cache_cross_frame_special", True) else (
        "camera" if m.get("kv_cache_camera_only", False) else "special")
    return LingBotStreamConfig(
        num_scale_frames=int(run["num_scale_frames"]), anchor_frames=int(m["kv_cache_scale_frames"]),
        sliding_window=int(m["kv_cache_sliding_window"]), keyframe_interval=int(run["keyframe_interval"]),
        keyframe_semantics=semantics, trajectory=trajectory, trajectory_frames=0, camera_window=0,
        keep_tokens=keep_tokens)


def _padded(rows: list[list[int]]) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.int64)


class StepRecorder:
    """The fixtures' per-call bookkeeping (`step_*` keys), read from a session after every call."""

    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {k: [] for k in ("cache_ids", "special_ids", "tokens", "camera", "frames",
                                                           "range", "skip", "tfp")}

    def record(self, session: Any) -> None:
        call = session.last_call
        mem = session.memory
        self.rows["cache_ids"].append(mem.cache_frame_ids())
        self.rows["special_ids"].append(mem.trajectory_frame_ids())
        self.rows["tokens"].append([len(layer) for layer in mem])
        self.rows["camera"].append(session.camera_cache_lengths())
        self.rows["frames"].append(call["num_frames"])
        self.rows["range"].append(list(call["t_range"]))
        self.rows["skip"].append(not call["keyframe"])
        self.rows["tfp"].append(session.t_next)

    def outputs(self) -> dict[str, torch.Tensor]:
        """Per-layer keys are `[steps, layers]`; `_compare` takes layer 0 where a fixture stores one column."""
        r = self.rows
        layers = len(r["tokens"][0])
        cache_frames = torch.tensor([len(ids) for ids in r["cache_ids"]], dtype=torch.int64)
        special_frames = torch.tensor([len(ids) for ids in r["special_ids"]], dtype=torch.int64)
        out = {
            "step_cache_frame_ids": _padded(r["cache_ids"]),
            "step_special_frame_ids": _padded(r["special_ids"]),
            "step_cache_tokens": torch.tensor(r["tokens"], dtype=torch.int64),
            "step_camera_cache_len": torch.tensor(r["camera"], dtype=torch.int64),
            "step_num_frames": torch.tensor(r["frames"], dtype=torch.int64),
            "step_rope3d_frame_range": torch.tensor(r["range"], dtype=torch.int64),
            "step_skip_append": torch.tensor(r["skip"], dtype=torch.bool),
            "step_total_frames_processed_after": torch.tensor(r["tfp"], dtype=torch.int64),
            "step_cache_frames": cache_frames[:, None].expand(-1, layers).contiguous(),
            "step_special_frames": special_frames[:, None].expand(-1, layers).contiguous(),
        }
        return out


def stream_outputs(model: LingBot, images: torch.Tensor, scfg: LingBotStreamConfig) -> dict[str, torch.Tensor]:
    """Push the frames one by one; every frame and call output under the fixture's key names."""
    session = model.new_session(scfg)
    recorder = StepRecorder()
    frames: list[dict[str, Any]] = []
    for f in range(images.shape[1]):
        new = session.push(images[:, f])
        if new:
            recorder.record(session)
        frames += new
    frames += session.flush()
    assert [fr["frame_index"] for fr in frames] == list(range(images.shape[1]))
    got = recorder.outputs()
    got.update({
        "pose_enc": torch.stack([fr["pose_enc"] for fr in frames], dim=1),
        "pose_enc_list": torch.stack([torch.stack(fr["pose_enc_list"]) for fr in frames]),
        "depth": torch.stack([fr["depth"] for fr in frames], dim=1),
        "depth_conf": torch.stack([fr["depth_conf"] for fr in frames], dim=1),
        "frame_is_keyframe": torch.tensor([fr["is_keyframe"] for fr in frames]),
        "frame_special_token_index": torch.tensor([[fr["token_index"][0]] * 2 + [fr["token_index"][1]]
                                                   for fr in frames], dtype=torch.int64),
    })
    for name in ("world_points", "world_points_conf"):  # fixtures made with the point head
        if name in frames[0]:
            got[name] = torch.stack([fr[name] for fr in frames], dim=1)
    for i in range(len(frames[0]["aggregated_tokens"])):
        got[f"aggregated_tokens.{i}"] = torch.stack([fr["aggregated_tokens"][i] for fr in frames], dim=1)
    return got


def _compare(cfg: dict, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    exact = cfg["compare"]["exact_keys"]
    for key in PER_LAYER_KEYS:  # fixtures that record one layer ("layer 0") store [steps]
        if key in want and key in got and want[key].dim() == 1 and got[key].dim() == 2:
            got[key] = got[key][:, 0]
    if _float32_run():
        atol, rtol = tolerances(cfg, "float32_reimplementation")
        compare_outputs(got, want, atol=atol, rtol=rtol, exact_keys=exact)
        return
    tokens = {k: v for k, v in want.items() if k.startswith("aggregated_tokens.")}
    heads = {k: v for k, v in want.items() if k not in tokens}
    atol, rtol = tolerances(cfg, "aggregated_tokens_float64")
    compare_outputs(got, tokens, atol=atol, rtol=rtol, exact_keys=exact)
    atol, rtol = tolerances(cfg, "head_outputs_float32_heads")
    compare_outputs(got, heads, atol=atol, rtol=rtol, exact_keys=exact)


@one_thread()
def run_stream(folder: Path, cfg: dict) -> None:
    """Both non-keyframe semantics of the stream fixture (each file present is checked)."""
    model, dtype = build_model(folder, cfg)
    images = load_tensors(folder / "inputs.safetensors")["images"].to(dtype)
    checked = 0
    for semantics, name in SEMANTICS_FILES.items():
        if not (folder / name).is_file():
            continue
        got = stream_outputs(model, images, stream_config(cfg, semantics))
        _compare(cfg, got, load_tensors(folder / name))
        checked += 1
    assert checked, f"{folder}: no output file among {sorted(SEMANTICS_FILES.values())}"


def window_config(cfg: dict) -> LingBotWindowConfig:
    run = cfg["run"]
    return LingBotWindowConfig(window_size=int(run["window_size"]), overlap_size=run.get("overlap_size"),
                               overlap_keyframes=run.get("overlap_keyframes"), alignment="reference")


def windowed_outputs(model: LingBot, images: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """The reference's `inference_windowed` outputs (merged, per window, per step) from the streaming windows."""
    recorder = StepRecorder()
    result = run_windowed(model, images, stream_config(cfg, "store", keep_tokens=False), window_config(cfg),
                          on_call=recorder.record)
    got = recorder.outputs()
    got.update(result)
    return got


@one_thread()
def run_windowed_fixture(folder: Path, cfg: dict) -> None:
    model, dtype = build_model(folder, cfg)
    images = load_tensors(folder / "inputs.safetensors")["images"].to(dtype)
    got = windowed_outputs(model, images, cfg)
    _compare(cfg, got, load_tensors(folder / "outputs.safetensors"))


PROCEDURES = {"lingbot_stream_sdpa": run_stream, "lingbot_windowed_sdpa": run_windowed_fixture}
