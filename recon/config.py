"""Typed option sets: dataclasses whose fields say their type, help text and allowed values.

A `Config` subclass is the one statement of what a component accepts: `from_options` builds it from keyword
options (a CLI's, a ROS parameter's, a node's argv) and refuses unknown names with the list of valid ones;
`__post_init__` checks every field against its annotation and its `choices`, so a wrong value fails where it is
given, not deep inside a model. Front ends build their flags and help from `option_fields` (recon.commands.
backend flags, recon.backends.flags). This module imports no torch, so `recon --help` can read every backend's options.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, Union

from recon.errors import ConfigError

# Number formats a learned network can compute in (`--dtype`); recon.models.weights maps them to torch dtypes.
COMPUTE_DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
# Storage formats of weights (`weights_dtype`).
WEIGHTS_DTYPE_CHOICES = ("fp32", "bf16", "fp16")

C = TypeVar("C", bound="Config")


def option(default: Any = None, help: str = "", *, choices: tuple[Any, ...] | None = None, flag: bool = False,
           metavar: str | None = None, default_factory: Any = None) -> Any:
    """A config field with its help text; `flag=True` gives it a named command-line flag, `choices` its values."""
    metadata = {"help": help, "choices": choices, "flag": flag, "metavar": metavar}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Config:
    """Base of the typed option sets; `kind` names the component in error messages."""

    kind: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints.get(f.name, Any)):
                raise ConfigError(f"{self.kind}: {f.name} must be {_describe(hints[f.name])}, got {value!r}")
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ConfigError(f"{self.kind}: {f.name} must be one of {', '.join(map(str, choices))}, "
                                  f"got {value!r}")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_options(cls: type[C], options: Mapping[str, Any], kind: str | None = None,
                     also: tuple[str, ...] = ()) -> C:
        """Build from keyword options; an unknown name raises ConfigError (starting with `kind`, default the
        class's) listing the valid ones (with `also`, names a caller takes besides the fields)."""
        unknown = sorted(set(options) - set(cls.option_names()) - set(also))
        if unknown:
            valid = ", ".join(sorted(cls.option_names())) or "none"
            valid += f" (and {', '.join(also)})" if also else ""
            plural = "s" if len(unknown) > 1 else ""
            names = ", ".join(unknown)
            raise ConfigError(f"{kind or cls.kind}: unknown option{plural} {names}; valid options: {valid}")
        return cls(**options)

    def to_options(self) -> dict[str, Any]:
        """The fields as keyword options (inverse of from_options)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def option_fields(cls: type[Config]) -> tuple[dataclasses.Field, ...]:
    """The fields of a config class, in declaration order."""
    return dataclasses.fields(cls)


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits annotation `hint` (scalars, unions, containers by their outer type; Any fits all)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin is not None:
        hint = origin
    if hint in (tuple, list):
        return isinstance(value, (tuple, list))
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    """Words for an annotation in an error message ("int or None")."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "None"
    origin = typing.get_origin(hint) or hint
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(
        origin, getattr(origin, "__name__", str(origin)))
