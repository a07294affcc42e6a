"""`--backend auto`: which backend `recon replay` and `recon live` run, and a sentence saying why.

The backend flags themselves (`--backend`, the named flags, `--backend-opt`) are recon.backends.flags, shared with
the node entry points.
"""

from __future__ import annotations

from recon.errors import ConfigError


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
