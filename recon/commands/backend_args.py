"""Backend selection flags shared by `recon replay`, `recon live` and `recon node recon`.

Named flags cover the options users reach for (`--weights`, `--backbone`, `--model-config`, `--budget`,
`--device`, `--dtype`, `--weights-dtype`, `--sliding-size`, `--mode`, `--keyframe-interval`, `--compile`);
`--backend-opt KEY=VALUE` passes anything else. A named flag given to a backend that does not take it is an
error, not a silently ignored option.

`--dtype` is the compute dtype for every learned backend (recon.models.weights.compute_dtype); the storage dtype of
the weights is the separate `--weights-dtype`.
"""

from __future__ import annotations

import argparse
from typing import Any

from recon.backends.options import parse_backend_options
from recon.errors import ConfigError

LEARNED = ("lingbot", "infinitevggt", "streamvggt", "vggt", "laser", "horizonstream")
# flag dest -> (backends that take it, help)
NAMED_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "weights": (LEARNED, "model weights file (default: the installed copy; `recon weights list` shows them)"),
    "model_config": (LEARNED, "full (the published model; needs its weights) or tiny (a small model with random "
                              "weights: tries the pipeline without any download, results are meaningless)"),
    "device": (LEARNED, "where the model runs: auto (a CUDA GPU when there is one, else cpu), cpu, cuda, cuda:1 ..."),
    "dtype": (LEARNED, "number format the network computes in, the same for every learned backend: auto (bf16 on "
                       "a GPU, fp16 on a GPU without bf16, fp32 on cpu), fp32, bf16, fp16; the weights stay fp32 "
                       "(see --weights-dtype)"),
    "weights_dtype": (("laser",), "storage format of the window model's weights: fp32 (default), bf16, fp16 (half "
                                  "the memory; the network then computes in that format)"),
    "budget": (("infinitevggt",), "how many tokens the streaming memory keeps, over all layers (default 1200000; "
                                  "smaller uses less GPU memory)"),
    "backbone": (("laser",), "model LASER runs on each window: pi3 or vggt"),
    "sliding_size": (("horizonstream",), "frames per step after the first window (1 = one result per frame)"),
    "mode": (("lingbot",), "stream (one bounded memory) or windowed (overlapping windows joined by Sim(3))"),
    "keyframe_interval": (("lingbot",), "keep every N-th frame in memory after the scale frames (1 = all)"),
    "compile": (("infinitevggt",), "static-shape caches and the per-frame step compiled once with torch.compile "
                                   "(CUDA graphs on CUDA)"),
}
_SWITCHES = ("compile",)  # flags without a value
_METAVARS = {"model_config": "{full,tiny}", "dtype": "{auto,fp32,bf16,fp16}", "weights_dtype": "{fp32,bf16,fp16}",
             "backbone": "{pi3,vggt}", "device": "DEVICE", "weights": "FILE", "budget": "TOKENS",
             "sliding_size": "N", "mode": "{stream,windowed}", "keyframe_interval": "N"}
_TYPES = {"budget": int, "sliding_size": int, "keyframe_interval": int}


def add_backend_arguments(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """Add `--backend`, the named backend flags and `--backend-opt` to a parser."""
    from recon.backends import registered

    entries = sorted(registered().values(), key=lambda e: -e.priority)
    names = ", ".join(e.name + ("" if e.weights else " (no weights needed)") for e in entries)
    parser.add_argument("--backend", default=default, metavar="NAME",
                        help=f"reconstruction method: auto (the best one whose weights are installed, else "
                             f"geometric) or one of {names} (default {default})")
    for dest, (takers, text) in NAMED_FLAGS.items():
        scope = "" if takers == LEARNED else f" [{', '.join(takers)}]"
        if dest in _SWITCHES:
            parser.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, action="store_const",
                                const=True, help=text + scope)
            continue
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, type=_TYPES.get(dest, str),
                            metavar=_METAVARS.get(dest), help=text + scope)
    parser.add_argument("--loop-closure", dest="loop_closure", choices=("auto", "on", "off"), default="auto",
                        help="map layer (recon.map): place recognition, loop closure and a pose graph over the "
                             "backend's poses; auto = on for geometric, off for the learned backends")
    parser.add_argument("--backend-opt", "-o", "--option", dest="backend_opt", action="append", default=[],
                        metavar="KEY=VALUE", help="any other backend option (JSON or Python literal), repeatable")


def backend_options(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """The keyword options for `backend` from parsed flags; named flags must suit the backend."""
    options = parse_backend_options(args.backend_opt)
    for dest, (takers, _) in NAMED_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if backend not in takers:
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{flag} does not apply to the {backend} backend (it applies to: {', '.join(takers)})")
        options[dest] = value
    switch = getattr(args, "loop_closure", "auto")
    if switch == "on" or (switch == "auto" and backend == "geometric"):
        options.setdefault("loop_closure", True)
    return options


def choose_backend(requested: str) -> tuple[str, str]:
    """The backend to run and a plain sentence saying why (what `--backend auto` found)."""
    from recon.backends import registered, select_auto

    if requested != "auto":
        if requested not in registered():
            raise ConfigError(f"unknown backend {requested!r}; known backends: {', '.join(sorted(registered()))}")
        return requested, f"requested with --backend {requested}"
    name, reason = select_auto()
    entry = registered()[name]
    skipped = [e.name for e in sorted(registered().values(), key=lambda e: -e.priority)
               if e.weights and e.priority > entry.priority]
    if not entry.weights and skipped:
        return name, (f"no model weights installed: using the weight-free {name} backend (none found for "
                      f"{', '.join(skipped)}; `recon weights pull NAME` fetches them)")
    return name, f"using {name}: {reason}"
