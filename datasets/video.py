"""Video files decoded lazily with PyAV, one frame at a time; timestamps from the container (pts x time base).

A packet that fails to decode is a `CorruptFrameError` naming the file and the packet time: with
`on_error=skip` it is counted and decoding continues with the next packet, with `stop` iteration ends there.
The length is the container's frame count (or duration x rate when the container does not store it), so
`len()` may be an estimate for some formats; iteration yields what the stream really holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from recon.calib.camera_info import find_camera_file, load_camera_file
from recon.datasets.base import OnError, ReadStats
from recon.errors import ConfigError, CorruptFrameError, SequenceError
from recon.io.images import corrupt_frame
from recon.types import CameraInfo, Frame

logger = logging.getLogger(__name__)


class VideoSequence:
    """A video file as a lazy sequence of RGB frames (no depth, no ground truth).

    Intrinsics come from a calibration file next to the video (`<stem>.json`, or `camera.json` in its folder),
    else they are unknown.
    """

    ground_truth = None
    has_depth = False

    def __init__(self, path: str | Path, *, on_error: OnError = OnError.STOP, stride: int = 1,
                 max_frames: int | None = None) -> None:
        import av

        if stride < 1:
            raise ConfigError(f"stride must be >= 1, got {stride}")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1, got {max_frames}")
        self.path = Path(path)
        if not self.path.is_file():
            raise SequenceError(f"{self.path}: no such video file")
        self.on_error = OnError(on_error)
        self.stride = stride
        self.max_frames = max_frames
        self.name = self.path.stem
        self.stats = ReadStats()
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise SequenceError(f"{self.path}: no video stream")
                stream = container.streams.video[0]
                self._width, self._height = int(stream.codec_context.width), int(stream.codec_context.height)
                n = int(stream.frames or 0)
                if n <= 0:
                    rate = stream.average_rate or stream.guessed_rate
                    duration = (float(stream.duration * stream.time_base) if stream.duration is not None
                                else (container.duration or 0) / 1e6)
                    n = round(duration * float(rate)) if rate else 0
                self._count = n
        except av.FFmpegError as e:
            raise SequenceError(f"cannot open video {self.path}: {e}") from e
        cam = self.path.with_suffix(".json")
        cam_file = cam if cam.is_file() else find_camera_file(self.path.parent)
        self.camera_info: CameraInfo | None = (
            load_camera_file(cam_file).camera_info((self._width, self._height)) if cam_file else None)

    def __len__(self) -> int:
        n = len(range(0, self._count, self.stride))
        return n if self.max_frames is None else min(n, self.max_frames)

    def _frames(self) -> Iterator[tuple[int, np.ndarray | CorruptFrameError]]:
        """(t_ns, RGB image or the decode error) per decoded frame / failed packet, in stream order."""
        import av

        try:
            container = av.open(str(self.path))
        except av.FFmpegError as e:
            raise SequenceError(f"cannot open video {self.path}: {e}") from e
        with container:
            stream = container.streams.video[0]
            tb = stream.time_base or Fraction(1, 1_000_000)
            last_t = -1
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.FFmpegError as e:
                    t = packet.pts * tb if packet.pts is not None else None
                    at = f"packet at {float(t):.3f} s" if t is not None else "a packet"
                    yield last_t, corrupt_frame(self.path, f"cannot decode {at} ({e})")
                    continue
                for vf in decoded:
                    if vf.pts is not None:
                        t_ns = int(round(vf.pts * (vf.time_base or tb) * 1_000_000_000))
                    else:
                        t_ns = last_t + 1
                    last_t = max(t_ns, last_t + 1)  # strictly increasing even with odd pts
                    yield last_t, vf.to_ndarray(format="rgb24")

    def __iter__(self) -> Iterator[Frame]:
        self.stats.frames_read = 0
        self.stats.frames_skipped = 0
        self.stats.skipped_paths.clear()
        K = None if self.camera_info is None else self.camera_info.K
        index = -1
        seq = 0
        for t_ns, item in self._frames():
            index += 1
            if index % self.stride:
                continue
            if self.max_frames is not None and seq >= self.max_frames:
                return
            if isinstance(item, CorruptFrameError):
                if self.on_error is OnError.STOP:
                    raise item
                self.stats.frames_skipped += 1
                self.stats.skipped_paths.append(str(item))
                logger.warning("%s: skipping: %s", self.name, item)
                seq += 1
                continue
            self.stats.frames_read += 1
            yield Frame(self.name, seq, t_ns, np.ascontiguousarray(item), K, None,
                        {"path": str(self.path), "index": index})
            seq += 1
