"""The sequence interface every reader implements: lazy iteration over `Frame`s plus optional ground truth.

Readers never load a whole sequence into memory. A frame that is missing or cannot be decoded raises
CorruptFrameError naming its path; `OnError` decides whether iteration skips it (counted) or stops.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from recon.errors import ConfigError, CorruptFrameError, ReconError
from recon.types import CameraInfo, Frame, Trajectory

logger = logging.getLogger(__name__)


class OnError(enum.StrEnum):
    """What a reader does with a corrupt or missing frame."""

    SKIP = "skip"
    STOP = "stop"


@dataclass
class ReadStats:
    """Counters a reader keeps while iterating (reported in the run summary)."""

    frames_read: int = 0
    frames_skipped: int = 0
    skipped_paths: list[str] = field(default_factory=list)


def skip_or_raise(stats: ReadStats, on_error: OnError, name: str, index: int, error: CorruptFrameError) -> None:
    """A corrupt frame: re-raised with `OnError.STOP`, else counted in `stats`, its path kept and a warning logged."""
    if on_error is OnError.STOP:
        raise error
    stats.frames_skipped += 1
    stats.skipped_paths.append(getattr(error, "path", None) or str(error))
    logger.warning("%s: skipping frame %d: %s", name, index, error)


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


class IndexedSequence:
    """Base of the readers whose frames are listed up front (files on disk), loaded one at a time.

    Subclasses fill `_count()` and `_load(index, seq)`; this class applies `stride` / `max_frames`, turns a
    `CorruptFrameError` into a counted, logged skip or a stop according to `on_error`, and keeps `stats`.
    """

    def __init__(self, name: str, *, on_error: OnError = OnError.STOP, stride: int = 1, max_frames: int | None = None,
                 camera_info: CameraInfo | None = None, ground_truth: Trajectory | None = None,
                 has_depth: bool = False) -> None:
        if stride < 1:
            raise ConfigError(f"stride must be >= 1, got {stride}")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1, got {max_frames}")
        self.name = name
        self.on_error = OnError(on_error)
        self.stride = stride
        self.max_frames = max_frames
        self.camera_info = camera_info
        self.ground_truth = ground_truth
        self.has_depth = has_depth
        self.stats = ReadStats()
        # Where `camera_info` came from, for the run summary (readers set it; None: unknown or not said).
        self.intrinsics_source: str | None = None

    def _count(self) -> int:
        """Number of frames in the whole sequence (before stride and max_frames)."""
        raise NotImplementedError

    def _load(self, index: int, seq: int) -> Frame:
        """Read frame `index`; raise CorruptFrameError naming the file when it is missing or undecodable."""
        raise NotImplementedError

    def _indices(self) -> range:
        r = range(0, self._count(), self.stride)
        return r if self.max_frames is None else r[: self.max_frames]

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self) -> Iterator[Frame]:
        self.stats.frames_read = 0
        self.stats.frames_skipped = 0
        self.stats.skipped_paths.clear()
        for seq, index in enumerate(self._indices()):
            try:
                frame = self._load(index, seq)
            except CorruptFrameError as e:
                skip_or_raise(self.stats, self.on_error, self.name, index, e)
                continue
            self.stats.frames_read += 1
            yield frame

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} frames)"


def ground_truth_with_gaps(t_ns: list[int], poses: list[np.ndarray | None]) -> Trajectory | None:
    """The frames' ground truth from per-frame poses where None is a gap (no pose file, a failed pose): the posed
    frames only, at their times; None when no frame has a pose."""
    posed = [i for i, T in enumerate(poses) if T is not None]
    if not posed:
        return None
    return Trajectory(np.asarray([t_ns[i] for i in posed], np.int64), np.stack([poses[i] for i in posed]))


def fit_camera_info(info: CameraInfo, size: tuple[int, int] | None, where: str) -> CameraInfo:
    """`info` for images of `size` (width, height): scaled, with a warning, when the calibration states another
    size (made at another resolution, or the images were resized after calibration); unchanged otherwise."""
    if size is None or (info.width, info.height) == tuple(size):
        return info
    w, h = size
    sx, sy = w / info.width, h / info.height
    aspect = " (another aspect ratio: check the calibration)" if abs(sx - sy) > 0.01 * sx else ""
    logger.warning("%s: camera info is %dx%d but the images are %dx%d: K scaled to the images%s", where, info.width,
                   info.height, w, h, aspect)
    return info.scaled(w, h)


def first_image_size(sequence: Sequence) -> tuple[int, int] | None:
    """(width, height) of a sequence's first frame (read once and dropped), or None when it has none."""
    try:
        frame = next(iter(sequence), None)
    except ReconError:
        return None
    return None if frame is None else (frame.width, frame.height)


class CalibratedSequence:
    """A sequence whose intrinsics come from a calibration file (`--camera-info`) instead of its reader.

    The file's CameraInfo is fitted to the image size (`fit_camera_info`) and every frame's K is replaced; its
    distortion stays in `camera_info`, for the camera node to undistort. Everything else is the wrapped reader's.
    """

    def __init__(self, sequence: Sequence, info: CameraInfo, size: tuple[int, int] | None = None,
                 source: str = "--camera-info") -> None:
        self.sequence = sequence
        name = getattr(sequence, "name", "sequence")
        self.camera_info = fit_camera_info(info, size or first_image_size(sequence), str(name))
        self.intrinsics_source = source

    def __getattr__(self, name: str) -> object:
        return getattr(self.sequence, name)

    def __len__(self) -> int:
        return len(self.sequence)

    def __iter__(self) -> Iterator[Frame]:
        info = self.camera_info
        for frame in self.sequence:
            frame_info = info if (info.width, info.height) == (frame.width, frame.height) \
                else info.scaled(frame.width, frame.height)
            frame.K = frame_info.K
            yield frame
