"""Seeded random model weights that are the same in every thread and process.

PyTorch's default parameter init draws from the process-wide generator. Sessions of one node build their models
on their own threads, so two seeded builds at once interleave their draws and get different weights (a stream
moved to another worker, or restored there, would then step a different model). `seeded` holds one lock for the
seed-and-build, so a seed always means the same weights.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_LOCK = threading.Lock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator and keep every other seeded build waiting until the block ends."""
    with _LOCK:
        torch.manual_seed(seed)
        yield
