"""Backend options given as text (`KEY=VALUE` on a command line, a ROS parameter, a node's argv).

One parser for every entry point, so `--backend-opt budget=600000` means the same to `recon replay`, `recon live`,
`recon node recon` and the ROS node. Values: JSON (numbers, true/false/null, lists, quoted strings), then Python
literals (True, None, tuples), then the words true/false/none in any case, else the text itself.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable
from typing import Any

from recon.errors import ConfigError


def parse_option_value(text: str) -> Any:
    """Typed value of one option's text (see the module docstring for the order tried)."""
    stripped = text.strip()
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(stripped)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    low = stripped.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return text


def parse_backend_options(items: Iterable[str], flag: str = "--backend-opt") -> dict[str, Any]:
    """`KEY=VALUE` strings -> keyword options; a malformed item raises ConfigError naming `flag`."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE with KEY a name")
        options[key] = parse_option_value(text)
    return options


def format_backend_options(options: dict[str, Any], flag: str = "--backend-opt") -> list[str]:
    """Options as repeated `flag KEY=JSON` arguments for a child process (inverse of parse_backend_options)."""
    out: list[str] = []
    for key, value in options.items():
        out += [flag, f"{key}={json.dumps(value)}"]
    return out
