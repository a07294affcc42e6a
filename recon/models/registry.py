"""Registry of published model weights: one frozen cfg per name (timm-style "pretrained cfg"), data not code.

Each entry records where the weights come from (Hugging Face repo and files), under which licence, how to build the
matching model (a lazily imported "module:callable" plus keyword arguments), the input geometry (image and patch
size), the model's native camera output (pose encoding) and the checkpoint filter that turns the published file's
state dict into our model's. Listing entries imports no model code; `build_model` imports it when asked.

Licences matter here: most of these checkpoints are **non-commercial** (NC / NC-SA); only `vggt-1b-commercial`
(gated, VGGT License v1) and HorizonStream's card (Apache-2.0, but see its note) allow commercial use. `recon weights
list` shows them; recon's own code is independent of them.

Sources: ../shared/reference/vggt_family.md §2.2, laser_pi3.md §3.3, horizonstream.md §1 (read 2026-11-24).

Example:
    cfg = get_weights_cfg("streamvggt")          # WeightsCfg(hf_repo="lch01/StreamVGGT", ...)
    model = build_model("streamvggt", device="meta")   # full-size architecture, no memory
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from recon.errors import ConfigError

logger = logging.getLogger(__name__)

StateDict = dict[str, Any]

# Wrapper prefixes added by DistributedDataParallel (`module.`) and torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Training checkpoints nest the weights under one of these keys (LASER's `--model_ckpt` uses "model").
CONTAINER_KEYS = ("model", "state_dict", "model_state_dict")


def unwrap_checkpoint(obj: Mapping[str, Any]) -> StateDict:
    """The tensor dict inside a loaded checkpoint: `obj` itself, or `obj[k]` for a known container key.

    A plain state dict has tensors as values; a training checkpoint has a dict under "model"/"state_dict" next to
    optimiser state. Probing values (not just key names) keeps a real parameter called "model" from being mistaken
    for a container.
    """
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    for key in CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    return dict(obj)


def strip_prefixes(state_dict: Mapping[str, Any], prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> StateDict:
    """Remove wrapper prefixes from every key, repeatedly (a compiled DDP model saves `module._orig_mod.x`)."""
    out: StateDict = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for p in prefixes:
                if key.startswith(p):
                    key = key[len(p):]
                    stripped = True
        out[key] = value
    return out


def filter_vggt_checkpoint(state_dict: Mapping[str, Any]) -> StateDict:
    """VGGT-1B / VGGT-1B-Commercial / StreamVGGT checkpoints -> recon's VGGT state dict.

    Unwraps training containers, strips `module.`/`_orig_mod.`, then drops `track_head.*` (394 keys) through
    `recon.models.vggt.filter_track_head`, the one documented track-head filter: recon does not build the track
    head, which only serves point tracking. The 1403 remaining keys load strictly.
    """
    from recon.models.vggt import filter_track_head

    return filter_track_head(strip_prefixes(unwrap_checkpoint(state_dict)))


def filter_pi3_checkpoint(state_dict: Mapping[str, Any]) -> StateDict:
    """pi3 `model.safetensors` (plain, no prefix) or a LASER-style training checkpoint ({"model": ...})."""
    return strip_prefixes(unwrap_checkpoint(state_dict))


def filter_horizonstream_checkpoint(state_dict: Mapping[str, Any]) -> StateDict:
    """HorizonStream.pt: the reference loader strips `module.`, `model.`, `state_dict.`, `sampler.`; the
    `HorizonStreamModel` wrapper adds `horizonstream.` (../shared/golden/README_horizonstream.md)."""
    prefixes = WRAPPER_PREFIXES + ("model.", "state_dict.", "sampler.", "horizonstream.")
    return strip_prefixes(unwrap_checkpoint(state_dict), prefixes)


def filter_lingbot_checkpoint(state_dict: Mapping[str, Any]) -> StateDict:
    """LingBot-Map `.pt` files (`lingbot-map-long.pt`, `lingbot-map.pt`): demo.py reads `ckpt.get("model", ckpt)`;
    unwrap that and strip wrapper prefixes, drop nothing. The published files hold exactly the model's 1342 keys
    (../shared/golden/manifests/lingbot_map_keys.tsv), so the strict load catches what the reference's
    `strict=False` hides: a wrong file, a truncated one, or `point_head.*` keys for a model built without it."""
    return strip_prefixes(unwrap_checkpoint(state_dict))


LINGBOT_SCALE_TOKEN = "aggregator.scale_token"


def filter_lingbot_stage1_checkpoint(state_dict: Mapping[str, Any]) -> StateDict:
    """`lingbot-map-stage1.pt` into recon's VGGT (the authors: it "can be loaded into the VGGT model for
    bidirectional inference"): the VGGT filter, then the scale token VGGT has no use for is dropped by name."""
    return {k: v for k, v in filter_vggt_checkpoint(state_dict).items() if k != LINGBOT_SCALE_TOKEN}


@dataclass(frozen=True)
class WeightsCfg:
    """Everything recon knows about one published (or test) checkpoint.

    Attributes:
        name: registry name (`recon weights pull NAME`, backend `weights=` entries).
        family: architecture family ("vggt", "pi3", "horizonstream").
        hf_repo: Hugging Face model repo, or None for local-only (test) weights.
        filenames: files in the repo that hold the weights, preferred first (safetensors before pickles).
        licence: the licence of the *weights* as published.
        commercial_use: whether that licence allows commercial use.
        gated: the repo needs an accepted access request (and a token) before download.
        builder: "module:callable" returning the nn.Module; called as builder(config, device=, dtype=) when
            `config_builder` is set, else builder(**model_kwargs, device=, dtype=).
        config_builder: "module:callable" building the config object from `model_kwargs`, or None.
        model_kwargs: keyword arguments for config_builder (or builder).
        img_size, patch_size: the training resolution (longer side) and the patch grid.
        pose_encoding: the model's native camera output ("absT_quaR_FoV" or "c2w_4x4").
        normalisation: where input normalisation happens (inputs to every model here are RGB in [0,1]).
        filter_fn: checkpoint state dict -> model state dict (pure).
        dropped_prefixes: key prefixes the filter removes on purpose (reported by `verify`).
        manifest: file under ../shared/golden/manifests listing the full checkpoint's keys and shapes.
        sha256: filename -> expected hex digest, where recorded (checked by `recon weights verify`).
        notes: caveats worth showing to a user (licence details, unverified facts).
        test_only: tiny random-weight variants used by tests; hidden from `recon weights list` by default.
        tiny_variant: the entry of the same family at the tiny (golden-fixture) size, which `model_config="tiny"`
            loads a weights file into (None: no tiny size).
    """

    name: str
    family: str
    hf_repo: str | None
    filenames: tuple[str, ...]
    licence: str
    commercial_use: bool
    builder: str
    config_builder: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    gated: bool = False
    img_size: int = 518
    patch_size: int = 14
    pose_encoding: str = "absT_quaR_FoV"
    normalisation: str = "ImageNet mean/std inside the model; inputs RGB in [0,1]"
    filter_fn: Callable[[Mapping[str, Any]], StateDict] = strip_prefixes
    dropped_prefixes: tuple[str, ...] = ()
    manifest: str | None = None
    sha256: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    notes: str = ""
    test_only: bool = False
    tiny_variant: str | None = None

    def __post_init__(self) -> None:
        if not self.filenames:
            raise ConfigError(f"WeightsCfg {self.name!r}: filenames is empty")
        for attr in ("builder", "config_builder"):
            spec = getattr(self, attr)
            if spec is not None and spec.count(":") != 1:
                raise ConfigError(f"WeightsCfg {self.name!r}: {attr} must be 'module:callable', got {spec!r}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"WeightsCfg {self.name!r}: img_size {self.img_size} is not a multiple of "
                              f"patch_size {self.patch_size}")
        # Freeze the mappings so a shared cfg cannot be edited through one caller.
        object.__setattr__(self, "model_kwargs", MappingProxyType(dict(self.model_kwargs)))
        object.__setattr__(self, "sha256", MappingProxyType(dict(self.sha256)))

    @property
    def source(self) -> str:
        """Human-readable origin, e.g. "hf://lch01/StreamVGGT/checkpoints.pth"."""
        if self.hf_repo is None:
            return "local file only"
        return f"hf://{self.hf_repo}/{self.filenames[0]}"


_REGISTRY: dict[str, WeightsCfg] = {}


def register_weights(cfg: WeightsCfg) -> WeightsCfg:
    """Add (or replace) an entry; returns it so tables can be written as a sequence of calls."""
    if cfg.name in _REGISTRY:
        logger.debug("replacing weights entry %s", cfg.name)
    _REGISTRY[cfg.name] = cfg
    return cfg


def list_weights(include_test: bool = False) -> list[str]:
    """Registered names, sorted; tiny test variants only with `include_test`."""
    return sorted(n for n, c in _REGISTRY.items() if include_test or not c.test_only)


def get_weights_cfg(name: str) -> WeightsCfg:
    """The entry called `name`; unknown names raise ConfigError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError as e:
        raise ConfigError(f"unknown weights {name!r}; known: {', '.join(list_weights(include_test=True))}") from e


def tiny_variant(name: str) -> str:
    """The tiny-size registry entry of `name` (itself if it is tiny); ConfigError when the family has none."""
    cfg = get_weights_cfg(name)
    if cfg.test_only:
        return name
    if cfg.tiny_variant is None:
        raise ConfigError(f"weights {name!r} have no tiny-size variant; tiny variants: "
                          f"{', '.join(n for n in list_weights(include_test=True) if get_weights_cfg(n).test_only)}")
    return get_weights_cfg(cfg.tiny_variant).name


def _import(spec: str) -> Callable[..., Any]:
    """Resolve "module:callable"; a missing module is reported as a configuration problem, not a crash."""
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ConfigError(f"model code {module_name} is not available in this build ({spec})") from e
        raise
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise ConfigError(f"{module_name} has no {attr!r} ({spec})") from e


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether `fn` takes keyword `name` (or **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_model(name_or_cfg: str | WeightsCfg, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> nn.Module:
    """Build the architecture of an entry with random weights (no checkpoint is read).

    `device="meta"` builds the full-size model without allocating memory, which is how keys and shapes are
    checked against a manifest or a checkpoint header. Builders that take `device=`/`dtype=` get them; others are
    built under a `torch.device` context and cast afterwards. The cfg is attached as `model.weights_cfg`, so a
    pipeline can read the input size and pose encoding from the model (timm's `pretrained_cfg`).
    """
    cfg = get_weights_cfg(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    builder = _import(cfg.builder)
    if cfg.config_builder is not None:
        args: tuple[Any, ...] = (_import(cfg.config_builder)(**cfg.model_kwargs),)
        kwargs: dict[str, Any] = {}
    else:
        args, kwargs = (), dict(cfg.model_kwargs)
    takes_device, takes_dtype = _accepts(builder, "device"), _accepts(builder, "dtype")
    if takes_device:
        kwargs["device"] = device
    if takes_dtype:
        kwargs["dtype"] = dtype
    with torch.device(device) if device is not None and not takes_device else nullcontext():
        model = builder(*args, **kwargs)
    if dtype is not None and not takes_dtype:
        model = model.to(dtype)
    model.weights_cfg = cfg
    return model


_VGGT_DROPPED = ("track_head.",)

register_weights(WeightsCfg(
    name="vggt-1b",
    family="vggt",
    hf_repo="facebook/VGGT-1B",
    # model.safetensors is read without pickle; model.pt is the file the VGGT README loads. Same 1797 keys.
    filenames=("model.safetensors", "model.pt"),
    licence="VGGT original checkpoint: non-commercial (facebookresearch/vggt README: "
            "'the original checkpoint remains non-commercial')",
    commercial_use=False,
    builder="recon.models.vggt:VGGT",
    config_builder="recon.models.vggt:VGGTConfig",
    model_kwargs={"causal": False},
    filter_fn=filter_vggt_checkpoint,
    dropped_prefixes=_VGGT_DROPPED,
    manifest="vggt1b_keys.tsv",
    tiny_variant="vggt-tiny",
    notes="Exact Hugging Face model-card licence string unverified. Scale is normalised, not metric.",
))

register_weights(WeightsCfg(
    name="vggt-1b-commercial",
    family="vggt",
    hf_repo="facebook/VGGT-1B-Commercial",
    filenames=("model.safetensors", "model.pt"),
    licence="VGGT License v1 (commercial use allowed; military/ITAR uses prohibited)",
    commercial_use=True,
    gated=True,
    builder="recon.models.vggt:VGGT",
    config_builder="recon.models.vggt:VGGTConfig",
    model_kwargs={"causal": False},
    filter_fn=filter_vggt_checkpoint,
    dropped_prefixes=_VGGT_DROPPED,
    manifest="vggt1b_keys.tsv",
    tiny_variant="vggt-tiny",
    notes="Gated: accept the access form on Hugging Face and log in (HF_TOKEN) before pulling. "
          "File names assumed equal to VGGT-1B's (unverified); same architecture.",
))

register_weights(WeightsCfg(
    name="streamvggt",
    family="vggt",
    hf_repo="lch01/StreamVGGT",
    filenames=("checkpoints.pth",),
    licence="CC BY-NC-SA 4.0 (follows the StreamVGGT repo; derived from the non-commercial VGGT checkpoint)",
    commercial_use=False,
    builder="recon.models.vggt:VGGT",
    config_builder="recon.models.vggt:VGGTConfig",
    model_kwargs={"causal": True},
    filter_fn=filter_vggt_checkpoint,
    dropped_prefixes=_VGGT_DROPPED,
    manifest="vggt1b_keys.tsv",
    tiny_variant="streamvggt-tiny",
    notes="Torch pickle of a plain state dict, loaded with weights_only=True. Also used by InfiniteVGGT.",
))

register_weights(WeightsCfg(
    name="pi3",
    family="pi3",
    hf_repo="yyfz233/Pi3",
    filenames=("model.safetensors",),
    licence="CC BY-NC 4.0 (weights; code BSD-3-Clause)",
    commercial_use=False,
    builder="recon.models.pi3:Pi3",
    config_builder="recon.models.pi3:Pi3Config",
    model_kwargs={},
    img_size=518,  # no fixed size: the reference loader scales to ~255k pixels, sides multiples of 14
    pose_encoding="c2w_4x4",
    filter_fn=filter_pi3_checkpoint,
    manifest="pi3_keys.tsv",
    tiny_variant="pi3-tiny",
    notes="Input size is a pixel budget (255,000 px), not a fixed width. Stored dtype unknown: cast on load.",
))

register_weights(WeightsCfg(
    name="horizonstream",
    family="horizonstream",
    hf_repo="NicolasCC/HorizonStream",
    filenames=("HorizonStream.pt",),
    licence="Apache-2.0 per the Hugging Face model card; the code repo has no LICENSE file",
    commercial_use=True,
    builder="recon.models.horizonstream:HorizonStream",
    model_kwargs={},
    pose_encoding="absT_quaR_FoV",
    filter_fn=filter_horizonstream_checkpoint,
    manifest="horizonstream_keys.tsv",
    tiny_variant="horizonstream-tiny",
    notes="Model-card licence only (see ../shared/reference/horizonstream.md §1); many source headers keep "
          "Meta copyright from VGGT/DINOv2. Loop closure needs extra files (dino_salad.ckpt) not handled here.",
))

# Tiny random-weight variants: the golden fixtures' configuration, so tests run the real build-and-load path.
def _tiny_entry(name: str, family: str, builder: str, config_builder: str, **fields: Any) -> WeightsCfg:
    """A test-only entry of a fixture's `weights.safetensors` (local file, random weights)."""
    return WeightsCfg(name=name, family=family, hf_repo=None, filenames=("weights.safetensors",),
                      licence="test weights (random init, ../shared/golden)", commercial_use=True, builder=builder,
                      config_builder=config_builder, test_only=True, **fields)


register_weights(_tiny_entry("vggt-tiny", "vggt", "recon.models.vggt:VGGT", "recon.models.vggt:tiny_config",
                             model_kwargs={"causal": False}, filter_fn=filter_vggt_checkpoint,
                             dropped_prefixes=_VGGT_DROPPED))
register_weights(_tiny_entry("streamvggt-tiny", "vggt", "recon.models.vggt:VGGT", "recon.models.vggt:tiny_config",
                             model_kwargs={"causal": True}, filter_fn=filter_vggt_checkpoint,
                             dropped_prefixes=_VGGT_DROPPED))
register_weights(_tiny_entry("pi3-tiny", "pi3", "recon.models.pi3:Pi3", "recon.models.pi3:tiny_config",
                             pose_encoding="c2w_4x4", filter_fn=filter_pi3_checkpoint))
register_weights(_tiny_entry("horizonstream-tiny", "horizonstream", "recon.models.horizonstream:HorizonStream",
                             "recon.models.horizonstream:tiny_config", filter_fn=filter_horizonstream_checkpoint))


# LingBot-Map (Robbyant): Apache-2.0 code (Robbyant/lingbot-map README, LICENSE); ../shared/reference/lingbot_map.md §2.
_LINGBOT_LICENCE = ("UNKNOWN for the weights: the Hugging Face model card (robbyant/lingbot-map) was not checked (no "
                    "network here); the code is Apache-2.0. Check the card before any commercial use")
_LINGBOT_NOTES = ("Torch pickle of a state dict (or {'model': ...}), loaded with weights_only=True and strictly. "
                  "Pose encoding world-to-camera like VGGT's; scale normalised, not metric. No sha256 recorded.")



def _lingbot_entry(name: str, filename: str, notes: str) -> WeightsCfg:
    """One of the two streaming checkpoints: same architecture, repo and rules, another file."""
    return WeightsCfg(name=name, family="lingbot", hf_repo="robbyant/lingbot-map", filenames=(filename,),
                      licence=_LINGBOT_LICENCE, commercial_use=False, builder="recon.models.lingbot:LingBot",
                      config_builder="recon.models.lingbot:LingBotConfig", model_kwargs={},
                      filter_fn=filter_lingbot_checkpoint, manifest="lingbot_map_keys.tsv",
                      notes=notes + _LINGBOT_NOTES, tiny_variant="lingbot-map-tiny")


register_weights(_lingbot_entry("lingbot-map-long", "lingbot-map-long.pt",
                                "Recommended by the authors for long sequences and large scenes. "))
register_weights(_lingbot_entry("lingbot-map", "lingbot-map.pt",
                                "The balanced checkpoint (the paper's and the benchmark's). "))

register_weights(WeightsCfg(
    name="lingbot-map-stage1",
    family="vggt",
    hf_repo="robbyant/lingbot-map",
    filenames=("lingbot-map-stage1.pt",),
    licence=_LINGBOT_LICENCE,
    commercial_use=False,
    builder="recon.models.vggt:VGGT",
    config_builder="recon.models.vggt:VGGTConfig",
    model_kwargs={"causal": False, "enable_point": False},
    filter_fn=filter_lingbot_stage1_checkpoint,
    dropped_prefixes=_VGGT_DROPPED + (LINGBOT_SCALE_TOKEN,),
    manifest="lingbot_map_keys.tsv",
    notes="Stage-1 training checkpoint; per the authors it loads into VGGT for bidirectional inference (their "
          "README adds '(c2w)'). Its key list is assumed to be LingBot's (VGGT-1B's without track and point heads, "
          "plus the scale token): unverified, `recon weights verify lingbot-map-stage1` reports any difference.",
))

register_weights(_tiny_entry("lingbot-map-tiny", "lingbot", "recon.models.lingbot:LingBot",
                             "recon.models.lingbot:tiny_config", filter_fn=filter_lingbot_checkpoint))
