"""Shared test configuration: tests run offline on CPU, deterministically, with few threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    """Folder of the shared reference fixtures ($RECON_GOLDEN_DIR, default ../shared/golden)."""
    return Path(os.environ.get("RECON_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))


def require_golden(name: str = "") -> Path:
    """The path of a fixture folder or file under the golden directory (the directory itself by default).

    Missing: skipped on a developer machine without ../shared, but a failure under CI=true, where the folder
    is part of the checkout layout and its absence means the tests would silently check nothing.
    """
    path = golden_dir() / name
    if not path.exists():
        message = f"golden fixture {path} not found (set RECON_GOLDEN_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(autouse=True, scope="session")
def _isolated_model_cache(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN202 - generator fixture
    """Point the Hugging Face cache at an empty folder: weights a developer has installed must not change what
    `--backend auto` picks in tests (tests that need a cache set their own)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
