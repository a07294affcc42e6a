"""The one place that knows which optional packages are installed.

Flags are computed lazily (importlib.util.find_spec, no import), so `import recon` stays cheap.
`require_package` raises with the exact pip extra that installs what is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from types import ModuleType

from recon.errors import MissingDependencyError


@cache
def is_available(module: str) -> bool:
    """True when `module` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_package(module: str, extra: str | None = None, pip_name: str | None = None) -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f"pip install 'recon[{extra}]'" if extra else f"pip install {pip_name or module}"
        raise MissingDependencyError(
            f"{module} is required here but cannot be imported ({e}); install it with: {hint}"
        ) from e
