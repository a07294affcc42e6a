"""The sequence interface every reader implements: lazy iteration over `Frame`s plus optional ground truth.

Readers never load a whole sequence into memory. A frame that is missing or cannot be decoded raises
CorruptFrameError naming its path; `OnError` decides whether iteration skips it (counted) or stops.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from recon.types import CameraInfo, Frame


class OnError(enum.StrEnum):
    """What a reader does with a corrupt or missing frame."""

    SKIP = "skip"
    STOP = "stop"


@dataclass
class Trajectory:
    """Timestamped camera-to-world poses (ground truth or estimate).

    Attributes:
        t_ns: int64 [N] timestamps in nanoseconds.
        T_world_cam: float64 [N,4,4] camera-to-world poses.
    """

    t_ns: np.ndarray
    T_world_cam: np.ndarray

    def __len__(self) -> int:
        return int(len(self.t_ns))


@dataclass
class ReadStats:
    """Counters a reader keeps while iterating (reported in the run summary)."""

    frames_read: int = 0
    frames_skipped: int = 0
    skipped_paths: list[str] = field(default_factory=list)


@runtime_checkable
class Sequence(Protocol):
    """A recorded sequence.

    Attributes:
        name: short name (folder name) used for output folders and stream ids.
        camera_info: calibration if known (None: unknown intrinsics).
        ground_truth: camera-to-world ground truth if the dataset has it, else None.
        has_depth: True when frames carry metric depth.
        stats: read counters, updated during iteration.
    """

    name: str
    camera_info: CameraInfo | None
    ground_truth: Trajectory | None
    has_depth: bool
    stats: ReadStats

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Frame]: ...
