"""Shared test configuration: tests run offline on CPU, deterministically, with few threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    """Folder of the shared reference fixtures ($RECON_GOLDEN_DIR, default ../shared/golden)."""
    return Path(os.environ.get("RECON_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
