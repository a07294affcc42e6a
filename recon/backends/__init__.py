"""Backend registry: names map to lazily imported factories, so listing backends imports no model code.

Each entry says how to build the backend and how to tell whether it can run here (weights installed),
which is what `--backend auto` uses to pick one and explain why.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recon.backends.base import Backend
from recon.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend.

    Attributes:
        name: the `--backend` value.
        factory: "module:function" returning a Backend from keyword options.
        weights: registry names of the weights it needs (empty: weight-free).
        priority: higher wins in `--backend auto` among runnable backends.
        summary: one line for `recon replay --help` and the auto-selection message.
    """

    name: str
    factory: str
    weights: tuple[str, ...] = ()
    priority: int = 0
    summary: str = ""


_REGISTRY: dict[str, BackendEntry] = {}


def register(entry: BackendEntry) -> None:
    """Add or replace a backend entry."""
    _REGISTRY[entry.name] = entry


def registered() -> dict[str, BackendEntry]:
    """All backend entries by name."""
    return dict(_REGISTRY)


def create_backend(name: str, **options: Any) -> Backend:
    """Build backend `name` with `options`; unknown names raise ConfigError listing the known ones.

    Two options belong to the map layer, not the backend: `loop_closure` (true: wrap the backend in
    `recon.map.MappedBackend`) and `map` (a dict of `recon.map.MapOptions` fields).
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; known backends: {', '.join(sorted(_REGISTRY))}")
    loop_closure = options.pop("loop_closure", False)
    map_options = options.pop("map", None)
    if not isinstance(loop_closure, bool):
        raise ConfigError(f"loop_closure must be true or false, got {loop_closure!r}")
    if map_options is not None and not loop_closure:
        raise ConfigError("map options given but loop_closure is off")
    module_name, func_name = _REGISTRY[name].factory.split(":")
    factory: Callable[..., Backend] = getattr(importlib.import_module(module_name), func_name)
    backend = factory(**options)
    if loop_closure:
        from recon.map import MapOptions, MappedBackend

        backend = MappedBackend(backend, MapOptions.from_dict(dict(map_options or {})))
    return backend


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
    for entry in sorted(_REGISTRY.values(), key=lambda e: -e.priority):
        ok, why = _weights_installed(entry.weights)
        if ok:
            skipped = "; ".join(reasons)
            reason = f"{entry.name}: {why}" + (f" (skipped: {skipped})" if skipped else "")
            return entry.name, reason
        reasons.append(f"{entry.name}: {why}")
    raise ConfigError("no backend can run: " + "; ".join(reasons))


# Built-in backends. Priorities: learned streaming methods first, the weight-free baseline last.
register(BackendEntry("geometric", "recon.backends.geometric:create", (), 0,
                      "weight-free: RGB-D odometry or monocular keyframe visual odometry"))
register(BackendEntry("lingbot", "recon.backends.lingbot:create", ("lingbot-map-long",), 110,
                      "LingBot-Map: anchor frames + pose window + trajectory memory (bounded; Apache-2.0 code)"))
register(BackendEntry("infinitevggt", "recon.backends.infinitevggt:create", ("streamvggt",), 100,
                      "StreamVGGT weights with InfiniteVGGT pruned KV memory (bounded)"))
register(BackendEntry("horizonstream", "recon.backends.horizonstream:create", ("horizonstream",), 90,
                      "HorizonStream: windowed + gated linear attention, metric scale"))
register(BackendEntry("laser", "recon.backends.laser:create", ("pi3",), 80,
                      "LASER: offline pi3/VGGT windows aligned by Sim(3) and per-layer scales"))
register(BackendEntry("streamvggt", "recon.backends.streamvggt:create", ("streamvggt",), 50,
                      "StreamVGGT with an unbounded KV cache (comparison)"))
register(BackendEntry("vggt", "recon.backends.vggt:create", ("vggt-1b",), 40,
                      "VGGT offline over short clips"))
