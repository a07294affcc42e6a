"""Replays every reference fixture under $RECON_GOLDEN_DIR (default ../shared/golden).

Each fixture folder is its own test case (the id is the folder name). The runner is chosen by the
config's `procedure` field, or by the fixture-name prefix for families without one, so a new fixture with
another seed or size is tested without new code. A fixture kind with no runner yet is an expected failure
naming the fixture, never a silent pass. Without the folder the tests skip, except under CI=true.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import golden_dir, require_golden
from tests.golden import runners

Runner = Callable[[Path, dict], None]


def _collect_runners() -> tuple[dict[str, Runner], dict[str, Runner]]:
    procedures: dict[str, Runner] = {}
    prefixes: dict[str, Runner] = {}
    for info in pkgutil.iter_modules(runners.__path__):
        module = importlib.import_module(f"{runners.__name__}.{info.name}")
        procedures.update(getattr(module, "PROCEDURES", {}))
        prefixes.update(getattr(module, "FIXTURE_PREFIXES", {}))
    return procedures, prefixes


def _fixture_folders() -> list[Path]:
    root = golden_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file())


FOLDERS = _fixture_folders()


def find_runner(cfg: dict) -> tuple[str, Runner | None]:
    """(kind, runner) for a fixture config; runner is None when no runner supports the kind."""
    procedures, prefixes = _collect_runners()
    if "procedure" in cfg:
        return cfg["procedure"], procedures.get(cfg["procedure"])
    name = cfg.get("fixture", "")
    matches = [p for p in prefixes if name.startswith(p)]
    if not matches:
        return name, None
    best = max(matches, key=len)
    return best, prefixes[best]


def test_golden_folder_present() -> None:
    root = require_golden()
    assert FOLDERS, f"no fixture folders with a config.json under {root}"


@pytest.mark.golden
@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_fixture(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    kind, runner = find_runner(cfg)
    if runner is None:
        pytest.xfail(f"fixture {folder.name}: kind {kind!r} is not supported yet")
    runner(folder, cfg)
