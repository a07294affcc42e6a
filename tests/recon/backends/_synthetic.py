"""Synthetic frames and a stand-in sequence shared by the learned-backend tests (no files, no dataset readers)."""

from __future__ import annotations

import numpy as np

from recon.datasets.base import ReadStats
from recon.types import Frame


def frames(n: int, h: int = 60, w: int = 80, seed: int = 0) -> list[Frame]:
    """`n` frames of one random image rolled 2 px to the right per frame (a small, consistent camera motion)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [Frame("cam", i, 1000 * i, np.roll(base, 2 * i, axis=1)) for i in range(n)]


class SyntheticSequence:
    """What `recon replay` needs of a sequence: `n` synthetic frames, counted in `stats.frames_read`."""

    name, camera_info, ground_truth, has_depth = "synthetic", None, None, False

    def __init__(self, n: int) -> None:
        self.n = n
        self.stats = ReadStats()

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for frame in frames(self.n):
            self.stats.frames_read += 1
            yield frame
