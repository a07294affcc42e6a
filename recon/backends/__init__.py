"""Backend registry: names map to typed configs and lazily imported factories, so listing backends (and their
options) imports no model code.

Each entry says which options the backend takes (its `BackendConfig` dataclass, recon.backends.configs), how to
build it and how to tell whether it can run here (weights installed), which is what `--backend auto` uses to
pick one and explain why.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recon.backends import configs
from recon.backends.base import Backend
from recon.backends.configs import BackendConfig
from recon.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend.

    Attributes:
        name: the `--backend` value.
        factory: "module:function" returning a Backend from its config.
        weights: registry names of the weights it needs (empty: weight-free).
        priority: higher wins in `--backend auto` among runnable backends (negative: never chosen by auto).
        summary: one line for `recon replay --help` and the auto-selection message.
        config: the dataclass of its options (the base class: a backend without options).
        map_defaults: map-layer options (recon.map.MapOptions fields) its outputs call for when loop closure is
            on; the user's `map` options override them field by field.
    """

    name: str
    factory: str
    weights: tuple[str, ...] = ()
    priority: int = 0
    summary: str = ""
    config: type[BackendConfig] = BackendConfig
    map_defaults: tuple[tuple[str, Any], ...] = ()


_REGISTRY: dict[str, BackendEntry] = {}


def register(entry: BackendEntry) -> None:
    """Add or replace a backend entry."""
    _REGISTRY[entry.name] = entry


def registered() -> dict[str, BackendEntry]:
    """All backend entries by name."""
    return dict(_REGISTRY)


# Options of the map layer, not of any backend: `loop_closure` (true: wrap the backend in recon.map.MappedBackend)
# and `map` (a dict of recon.map.MapOptions fields).
MAP_OPTIONS = ("loop_closure", "map")


def entry(name: str) -> BackendEntry:
    """The entry of backend `name`; unknown names raise ConfigError listing the known ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; known backends: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _split_map_options(options: dict[str, Any]) -> tuple[dict[str, Any], bool, Any]:
    """(backend options, loop_closure, map options), the map layer's checked."""
    rest = {k: v for k, v in options.items() if k not in MAP_OPTIONS}
    loop_closure, map_options = options.get("loop_closure", False), options.get("map")
    if not isinstance(loop_closure, bool):
        raise ConfigError(f"loop_closure must be true or false, got {loop_closure!r}")
    if map_options is not None and not loop_closure:
        raise ConfigError("map options given but loop_closure is off")
    return rest, loop_closure, map_options


def backend_config(name: str, **options: Any) -> BackendConfig:
    """The validated config of backend `name` (map-layer options aside); an unknown or ill-typed option raises
    ConfigError listing the valid ones. Builds no model."""
    rest, _, _ = _split_map_options(options)
    return entry(name).config.from_options(rest, kind=f"{name} backend", also=MAP_OPTIONS)


def create_backend(name: str, **options: Any) -> Backend:
    """Build backend `name` from keyword options (validated by its config first), wrapped in the map layer when
    `loop_closure` is true."""
    config = backend_config(name, **options)
    _, loop_closure, map_options = _split_map_options(options)
    module_name, func_name = _REGISTRY[name].factory.split(":")
    factory: Callable[[BackendConfig], Backend] = getattr(importlib.import_module(module_name), func_name)
    backend = factory(config)
    if loop_closure:
        from recon.map import MapOptions, MappedBackend

        backend = MappedBackend(backend, MapOptions.from_dict(map_options_for(name, map_options)))
    return backend


def map_options_for(name: str, map_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The map-layer options backend `name` runs with: its registry defaults under the user's."""
    return _over(dict(entry(name).map_defaults), dict(map_options or {}))


def _over(defaults: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """`user` over `defaults`; nested option groups (dicts) merged one level down."""
    out = dict(defaults)
    for key, value in user.items():
        out[key] = {**out[key], **value} if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def _weights_installed(names: tuple[str, ...]) -> tuple[bool, str]:
    """True when every named weight file resolves locally (no network)."""
    if not names:
        return True, "needs no weights"
    try:
        from recon.models.weights import find_local_weights
    except ImportError:
        return False, "model weights support is not available"
    for weight_name in names:
        path = find_local_weights(weight_name)
        if path is None:
            return False, f"weights {weight_name!r} are not installed (recon weights pull {weight_name})"
    return True, f"weights {', '.join(names)} are installed"


def select_auto() -> tuple[str, str]:
    """Pick the best runnable backend; returns (name, human-readable reason)."""
    reasons = []
    for candidate in sorted(_REGISTRY.values(), key=lambda e: -e.priority):
        if candidate.priority < 0:
            continue
        ok, why = _weights_installed(candidate.weights)
        if ok:
            skipped = "; ".join(reasons)
            reason = f"{candidate.name}: {why}" + (f" (skipped: {skipped})" if skipped else "")
            return candidate.name, reason
        reasons.append(f"{candidate.name}: {why}")
    raise ConfigError("no backend can run: " + "; ".join(reasons))


# Built-in backends. Priorities: learned streaming methods first, the weight-free baseline last; the identity test
# backend is never chosen by auto but can be asked for everywhere (node tests, transport benchmarks).
register(BackendEntry("geometric", "recon.backends.geometric:create", (), 0,
                      "weight-free: RGB-D odometry or monocular keyframe visual odometry",
                      configs.GeometricBackendConfig,
                      # Its keyframe points and poses come from one map, so the scale between keyframes is 1 by
                      # construction: measuring it from their points only adds noise (recon.map.odometry).
                      map_defaults=(("odometry", {"edges": "backend"}),)))
register(BackendEntry("lingbot", "recon.backends.lingbot:create", ("lingbot-map-long",), 110,
                      "LingBot-Map: anchor frames + pose window + trajectory memory (bounded; Apache-2.0 code)",
                      configs.LingBotBackendConfig))
register(BackendEntry("infinitevggt", "recon.backends.infinitevggt:create", ("streamvggt",), 100,
                      "StreamVGGT weights with InfiniteVGGT pruned KV memory (bounded)",
                      configs.InfiniteVGGTBackendConfig))
register(BackendEntry("horizonstream", "recon.backends.horizonstream:create", ("horizonstream",), 90,
                      "HorizonStream: windowed + gated linear attention, metric scale",
                      configs.HorizonStreamBackendConfig))
register(BackendEntry("laser", "recon.backends.laser:create", ("pi3",), 80,
                      "LASER: offline pi3/VGGT windows aligned by Sim(3) and per-layer scales",
                      configs.LaserBackendConfig))
register(BackendEntry("streamvggt", "recon.backends.streamvggt:create", ("streamvggt",), 50,
                      "StreamVGGT with an unbounded KV cache (comparison)",
                      configs.StreamVGGTBackendConfig))
register(BackendEntry("vggt", "recon.backends.vggt:create", ("vggt-1b",), 40,
                      "VGGT offline over short clips",
                      configs.VGGTBackendConfig))
register(BackendEntry("identity", "recon.backends.identity:create", (), -100,
                      "test backend: pose x = seq cm, no model (node tests, transport benchmarks)",
                      configs.IdentityBackendConfig))
