"""The one place that knows which optional packages are installed.

Flags are computed lazily (importlib.util.find_spec, no import), so `import recon` stays cheap.
`require_package` raises with the exact pip extra that installs what is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from recon.errors import MissingDependencyError
from recon.kernels._base import is_available

__all__ = ["is_available", "require_package"]


def require_package(module: str, extra: str | None = None, pip_name: str | None = None) -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f"pip install 'recon[{extra}]'" if extra else f"pip install {pip_name or module}"
        raise MissingDependencyError(
            f"{module} is required here but cannot be imported ({e}); install it with: {hint}"
        ) from e
