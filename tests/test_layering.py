"""The layering rules of DESIGN.md §2 as import contracts, checked over every source file (CI runs this file).

Imports are read from the source (ast), including the lazy ones inside functions, so a rule cannot be dodged by
importing late; `if TYPE_CHECKING:` blocks are skipped (they create no runtime dependency). Folders map to import
names as pyproject/setup.py install them (`nodes/` -> `recon.nodes` ...).

Layers, top to bottom: the CLI (`recon.cli`, `recon.commands`) > nodes (their entry modules `recon.nodes.*_cli`,
which are `recon node KIND`, included), viewer > recon core (backends > align > models > memory, geometry ...) >
kernels. Readers (`recon.datasets`) sit beside the core: the core's result path (sinks, evaluation, backends,
models) does not read sequences.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"recon": "recon", "nodes": "recon.nodes", "kernels": "recon.kernels", "calib": "recon.calib",
           "datasets": "recon.datasets", "viewer": "recon.viewer"}
CLI = ("recon.cli", "recon.commands")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str) -> set[str]:
    """Absolute names of everything `module` imports at run time."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = _module_name(path)
            graph[module] = _imports(ast.parse(path.read_text(), str(path)), module)
    return graph


GRAPH = _graph()


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _violations(importers: tuple[str, ...], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    return sorted(f"{module} imports {name}" for module, names in GRAPH.items()
                  if _within(module, importers) and not _within(module, allowed) for name in names
                  if _within(name, forbidden))


CORE = ("recon",)
CORE_EXCEPT = (*CLI, "recon.nodes", "recon.kernels", "recon.calib", "recon.datasets", "recon.viewer")


def test_the_graph_covers_the_tree() -> None:
    assert {"recon.cli", "recon.backends", "recon.nodes.recon_node", "recon.kernels.attention",
            "recon.datasets.base", "recon.viewer"} <= set(GRAPH)


def test_the_core_never_imports_nodes_viewer_or_the_cli() -> None:
    assert _violations(CORE, ("recon.nodes", "recon.viewer", *CLI), allowed=CORE_EXCEPT) == []


def test_kernels_import_only_torch_triton_xformers_and_themselves() -> None:
    third_party = {"torch", "triton", "xformers", "flash_attn", "fla"}
    bad = sorted(f"{module} imports {name}" for module, names in GRAPH.items() if _within(module, ("recon.kernels",))
                 for name in names
                 if not _within(name, ("recon.kernels",)) and name.split(".")[0] not in sys.stdlib_module_names
                 and name.split(".")[0] not in third_party)
    assert bad == []


def test_the_result_path_does_not_read_sequences() -> None:
    users = ("recon.sinks", "recon.eval", "recon.export", "recon.backends", "recon.models", "recon.geometry",
             "recon.memory", "recon.align", "recon.io", "recon.types", "recon.errors", "recon.config")
    assert _violations(users, ("recon.datasets",)) == []


def test_models_memory_and_geometry_sit_below_alignment_backends_and_outputs() -> None:
    above = ("recon.align", "recon.backends", "recon.sinks", "recon.eval", "recon.export")
    assert _violations(("recon.models", "recon.geometry", "recon.memory"), above) == []


def test_nodes_never_import_the_cli() -> None:
    """Not even their entry modules (`recon node KIND`): the flags they share with `recon replay/live` live below
    both (recon.backends.flags, recon.nodes.cli_util)."""
    assert _violations(("recon.nodes",), CLI) == []


@pytest.mark.timeout(120)
def test_the_cli_help_imports_no_torch() -> None:
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "recon.cli", "--help"], capture_output=True,
                         text=True, timeout=110, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "recon.commands" in imported  # recon.cli itself runs as __main__
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
