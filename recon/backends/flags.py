"""Backend flags for every entry point (`recon replay`, `recon live`, `recon node recon`, `recon node ros`), built from
the backends' config dataclasses (recon.backends.configs).

A config field marked `flag=True` becomes a named flag (`--model-config`, `--budget` ...) with its help, type and
choices; the help says which backends take it. `--backend-opt KEY=VALUE` passes any other field. A named flag
given to a backend whose config lacks that field is an error, and so is an unknown `--backend-opt` (the message
lists the backend's valid options): nothing is silently ignored.

`--dtype` is the compute dtype for every learned backend (recon.models.weights.compute_dtype); the storage dtype of
the weights is the separate `--weights-dtype`.

It sits with the backends, below the command line and the nodes, so node entry points build the same flags without
importing `recon.commands` (the layering of DESIGN.md §2, tests/test_layering.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from recon.backends.options import parse_backend_options
from recon.errors import ConfigError


@dataclasses.dataclass
class NamedFlag:
    """One named backend flag: the field it sets and the backends whose config has that field."""

    dest: str
    help: str
    kind: type  # int, float, str, or bool (a switch)
    choices: tuple[Any, ...] | None
    metavar: str | None
    takers: tuple[str, ...]

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


def named_flags() -> dict[str, NamedFlag]:
    """The named flags of every registered backend's config, by destination (built fresh: the registry may grow)."""
    from recon.backends import registered

    entries = sorted(registered().values(), key=lambda e: -e.priority)
    flags: dict[str, NamedFlag] = {}
    for entry in entries:
        hints = typing.get_type_hints(entry.config)
        for f in dataclasses.fields(entry.config):
            if f.metadata.get("flag") and f.name not in flags:
                flags[f.name] = NamedFlag(f.name, f.metadata.get("help", ""), _scalar(hints[f.name]),
                                          f.metadata.get("choices"), f.metadata.get("metavar"), ())
    for entry in entries:
        names = {f.name for f in dataclasses.fields(entry.config)}
        for flag in flags.values():
            if flag.dest in names:
                flag.takers += (entry.name,)
    return flags


def _scalar(hint: Any) -> type:
    """The command-line type of an annotation: its first scalar member (bool means a switch)."""
    for arg in typing.get_args(hint) or (hint,):
        if arg in (bool, int, float, str):
            return arg
    return str


def add_backend_arguments(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """Add `--backend`, the named backend flags and `--backend-opt` to a parser."""
    from recon.backends import registered

    entries = sorted(registered().values(), key=lambda e: -e.priority)
    names = ", ".join(e.name + ("" if e.weights else " (no weights needed)") for e in entries if e.priority >= 0)
    tests = ", ".join(e.name for e in entries if e.priority < 0)
    parser.add_argument("--backend", default=default, metavar="NAME",
                        help=f"reconstruction method: auto (the best one whose weights are installed, else "
                             f"geometric) or one of {names}" + (f"; test backends: {tests}" if tests else "")
                             + f" (default {default})")
    learned = {e.name for e in entries if e.weights}
    for flag in named_flags().values():
        scope = "" if set(flag.takers) == learned else f" [{', '.join(flag.takers)}]"
        if flag.kind is bool:
            parser.add_argument(flag.flag, dest=flag.dest, default=None, action="store_const", const=True,
                                help=flag.help + scope)
            continue
        parser.add_argument(flag.flag, dest=flag.dest, default=None, type=flag.kind, choices=flag.choices,
                            metavar=flag.metavar, help=flag.help + scope)
    parser.add_argument("--loop-closure", dest="loop_closure", choices=("auto", "on", "off"), default="auto",
                        help="map layer (recon.map): place recognition, loop closure and a pose graph over the "
                             "backend's poses; auto = on for geometric, off for the learned backends")
    parser.add_argument("--backend-opt", "-o", "--option", dest="backend_opt", action="append", default=[],
                        metavar="KEY=VALUE", help="any other option of the backend's config (JSON or Python "
                                                  "literal), repeatable; a wrong name lists the valid ones")


def backend_options(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """The keyword options for `backend` from parsed flags, validated against its config (ConfigError listing the
    valid options otherwise); builds no model."""
    from recon.backends import backend_config

    options = parse_backend_options(args.backend_opt)
    for flag in named_flags().values():
        value = getattr(args, flag.dest, None)
        if value is None:
            continue
        if backend not in flag.takers:
            raise ConfigError(f"{flag.flag} does not apply to the {backend} backend (it applies to: "
                              f"{', '.join(flag.takers)})")
        options[flag.dest] = value
    switch = getattr(args, "loop_closure", "auto")
    if switch == "on" or (switch == "auto" and backend == "geometric"):
        options.setdefault("loop_closure", True)
    backend_config(backend, **options)
    return options
