"""Runner for the Kimi Delta Attention fixture (kda_tiny): the layer in one call and in chunks with carried
state, and the bare gated delta rule in every form the fixture records."""

from __future__ import annotations

from pathlib import Path

import torch

from recon.kernels.kda import activate_kda_inputs, kda_chunked, kda_recurrent, l2_normalize
from recon.models.layers.kda_attention import KimiDeltaAttention
from tests.golden.util import load_tensors

# README "Tolerances": the raw op (outputs and states) atol 1e-5; the layer output atol 5e-5, rtol 1e-4, because the
# gated RMSNorm divides by a per-head RMS that falls to ~8e-4 (so `o_normed`, after that norm, gets the layer's).
LAYER_TOL = {"atol": 5e-5, "rtol": 1e-4}
OP_TOL = {"atol": 1e-5, "rtol": 0.0}


def build_layer(cfg: dict, weights: dict[str, torch.Tensor]) -> KimiDeltaAttention:
    kw = cfg["layer_kwargs"]
    layer = KimiDeltaAttention(kw["hidden_size"], kw["num_heads"], kw["head_dim"], expand_v=kw["expand_v"],
                               conv_size=kw["conv_size"], norm_eps=kw["norm_eps"],
                               l2_eps=cfg["derived"]["l2norm_eps"])
    layer.load_state_dict(weights, strict=True)
    return layer.eval()


def _check_state(state, want: dict[str, torch.Tensor], recurrent_key: str, conv_key: str) -> None:
    """Compare a KDAState with stored tensors; `conv_key` has a `{}` for q, k, v."""
    torch.testing.assert_close(state.recurrent, want[recurrent_key], **OP_TOL)
    for name in ("q", "k", "v"):
        torch.testing.assert_close(getattr(state, f"conv_{name}"), want[conv_key.format(name)], **OP_TOL)


def run(folder: Path, cfg: dict) -> None:
    x = load_tensors(folder / "inputs.safetensors")
    want = load_tensors(folder / "outputs.safetensors")
    layer = build_layer(cfg, load_tensors(folder / "weights.safetensors"))
    with torch.no_grad():
        inter: dict = {}
        y, state = layer(x["x"], intermediates=inter)
        torch.testing.assert_close(y, want["full.y"], **LAYER_TOL)
        for key, value in inter.items():
            tol = LAYER_TOL if key == "o_normed" else OP_TOL
            torch.testing.assert_close(value, want[f"full.intermediate.{key}"], **tol, msg=key)
        _check_state(state, want, "full.final_recurrent_state", "full.final_conv_state_{}")
        for split, sizes in cfg["splits"].items():
            state, ys, start = None, [], 0
            for i, n in enumerate(sizes):
                y_i, state = layer(x["x"][:, start:start + n], state)
                ys.append(y_i)
                start += n
                prefix = f"split_{split}.chunk{i}"
                _check_state(state, want, f"{prefix}.recurrent_state", prefix + ".conv_state_{}")
            torch.testing.assert_close(torch.cat(ys, 1), want[f"split_{split}.y"], **LAYER_TOL)
    _run_raw_op(x, want, cfg)


def _run_raw_op(x: dict[str, torch.Tensor], want: dict[str, torch.Tensor], cfg: dict) -> None:
    scale = cfg["raw_op"]["scale"]
    plain = (x["op.q_l2"], x["op.k_l2"], x["op.v"], x["op.g_log"], x["op.beta"])
    for name, fn in (("chunk", kda_chunked), ("naive_recurrent", kda_recurrent)):
        o, S = fn(*plain, scale=scale, initial_state=x["op.h0_kv"])
        torch.testing.assert_close(o, want[f"op_plain.{name}.o"], **OP_TOL)
        torch.testing.assert_close(S, want[f"op_plain.{name}.final_state_kv"], **OP_TOL)
    first = [t[:, :128] for t in plain]
    o, S = kda_chunked(*first, scale=scale, initial_state=x["op.h0_kv"], chunk_size=cfg["raw_op"]["chunk_size"])
    torch.testing.assert_close(o, want["op_plain.naive_chunk64_first128.o"], **OP_TOL)
    torch.testing.assert_close(S, want["op_plain.naive_chunk64_first128.final_state_kv"], **OP_TOL)
    o1, S1 = kda_chunked(*[t[:, :50] for t in plain], scale=scale, initial_state=x["op.h0_kv"])
    torch.testing.assert_close(S1, want["op_plain.split50.state_after_50_kv"], **OP_TOL)
    o2, S2 = kda_chunked(*[t[:, 50:] for t in plain], scale=scale, initial_state=S1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), want["op_plain.split50.o"], **OP_TOL)
    torch.testing.assert_close(S2, want["op_plain.split50.final_state_kv"], **OP_TOL)
    # The layer's flags: raw q/k (normalised here), gate activation, beta sigmoid, value-major state.
    g, beta = activate_kda_inputs(x["op.g_raw"], x["op.beta_logit"], x["op.A_log"], x["op.dt_bias"])
    torch.testing.assert_close(g, want["op_layerflags.g_activated"], **OP_TOL)
    torch.testing.assert_close(beta, want["op_layerflags.beta_activated"], **OP_TOL)
    args = (l2_normalize(x["op.q"]), l2_normalize(x["op.k"]), x["op.v"], g, beta)
    for name, fn in (("chunk", kda_chunked), ("fused_recurrent", kda_recurrent)):
        o, S = fn(*args, scale=scale, initial_state=x["op.h0_vk"].transpose(-1, -2))
        torch.testing.assert_close(o, want[f"op_layerflags.{name}.o"], **OP_TOL)
        torch.testing.assert_close(S.transpose(-1, -2), want[f"op_layerflags.{name}.final_state_vk"], **OP_TOL)


FIXTURE_PREFIXES = {"kda": run}
