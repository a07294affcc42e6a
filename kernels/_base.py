"""What the kernels need from the layer above, defined here because `recon.kernels` imports only torch, triton
and xformers (DESIGN.md §2): the root of recon's exception hierarchy and the installed-package probe.

`recon.errors` and `recon.utils.imports` re-export these same objects, so `except recon.errors.ConfigError`
catches a kernel's ConfigError and there is one `is_available`.
"""

from __future__ import annotations

import importlib.util
from functools import cache


class ReconError(Exception):
    """Base class of every error recon raises on purpose."""


class ConfigError(ReconError, ValueError):
    """An option or configuration value is invalid; the message names the field and the value."""


class MissingDependencyError(ReconError, ImportError):
    """An optional package is needed; the message gives the pip extra that installs it."""


@cache
def is_available(module: str) -> bool:
    """True when `module` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
