"""Frame sources for the camera node: live cameras (OpenCV), recorded sequences, and ROS bags / MCAP.

`open_source(spec)` picks by the spec's shape:

- an integer (`0`) or a device path (`/dev/video0`): a live OpenCV camera. A capture thread keeps only
  the newest frame, stamped at capture (`time.time_ns()` right after the grab); overwritten frames are
  counted as drops;
- a `.bag` / `.mcap` file, or a rosbag2 folder (with `metadata.yaml`): `recon.datasets.bag.BagSequence`, the
  reader `recon replay` uses (colour, registered depth and CameraInfo topics chosen by message type unless
  `topic` / `depth_topic` / `camera_info_topic` name them); stamps come from the message headers;
- `pattern:COUNT:WxH`: generated frames, for tests and benchmarks;
- anything else (video file, image folder, dataset folder): `recon.datasets.open_sequence(path)`.

Recorded sources are iterated in order and never drop a frame: the camera node paces them with credits.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recon.errors import ConfigError, CorruptFrameError, SequenceError
from recon.types import CameraInfo, Frame

logger = logging.getLogger(__name__)


class Source(Protocol):
    """What the camera node reads from.

    Attributes:
        live: True for a live camera (latest-frame-wins), False for recorded data (nothing dropped).
        camera_info: calibration if known.
        drops: frames the source overwrote before they were taken (live only).
    """

    live: bool
    camera_info: CameraInfo | None
    drops: int

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


def _is_device(spec: str) -> bool:
    return spec.isdigit() or spec.startswith("/dev/video")


def _taken(source: LiveSource | PushSource) -> Iterator[Frame]:
    """A live source's frames as they are taken, until it has finished."""
    while not source.finished:
        frame = source.take(0.5)
        if frame is not None:
            yield frame


class LiveSource:
    """A live feed: a capture thread calls `grab()` continuously and keeps only the newest frame.

    `grab()` returns an RGB uint8 image, or None when the feed has ended; the frame is stamped right
    after it returns (capture time). Frames overwritten before anyone took them are counted in `drops`.
    """

    live = True

    def __init__(self, name: str, grab: Callable[[], np.ndarray | None], camera_info: CameraInfo | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self.name = name
        self.camera_info = camera_info
        self.drops = 0
        self.failures = 0
        self._grab = grab
        self._on_close = on_close
        self._latest: tuple[np.ndarray, int, int] | None = None
        self.captured = 0
        self._taken = True
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, name=f"capture-{name}", daemon=True)
        self._thread.start()

    def __str__(self) -> str:
        return f"LiveSource({self.name})"

    def _capture(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    rgb = self._grab()
                except CorruptFrameError as e:
                    self.failures += 1
                    if self.failures > 10:
                        logger.error("%s: more than 10 consecutive read failures (%s), stopping", self, e)
                        break
                    continue
                t_ns = time.time_ns()
                if rgb is None:
                    break
                self.failures = 0
                with self._cond:
                    if not self._taken:
                        self.drops += 1
                    self._latest, self._taken = (rgb, t_ns, self.captured), False
                    self.captured += 1
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._stop.set()
                self._cond.notify_all()

    def read_latest(self, timeout_s: float) -> tuple[np.ndarray, int, int] | None:
        """(image, capture t_ns, capture index) of the newest frame not taken yet, waiting up to `timeout_s`.

        The capture index becomes the frame's `seq`, so gaps downstream show where frames were dropped.
        """
        with self._cond:
            if self._taken and not self._stop.is_set() and timeout_s > 0:
                self._cond.wait(timeout_s)
            if self._taken or self._latest is None:
                return None
            self._taken = True
            return self._latest

    def counts(self) -> tuple[int, int]:
        """(captured, dropped) at this instant, consistently: a frame still waiting in the capture buffer (never
        sent) counts as dropped, so captured == sent + dropped for whoever stops reading now."""
        with self._cond:
            return self.captured, self.drops + int(not self._taken and self._latest is not None)

    @property
    def finished(self) -> bool:
        """True once the feed ended and its last frame was taken."""
        with self._cond:
            return self._stop.is_set() and self._taken

    def wait_frame(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a frame not taken yet (or the feed's end); True when one is there."""
        with self._cond:
            if self._taken and not self._stop.is_set():
                self._cond.wait(timeout_s)
            return not self._taken

    def take(self, timeout_s: float) -> Frame | None:
        """The newest frame not taken yet (seq: its capture index), waiting up to `timeout_s`; what the camera
        node reads from a live source."""
        got = self.read_latest(timeout_s)
        if got is None:
            return None
        return Frame(self.name, got[2], got[1], got[0], K=None if self.camera_info is None else self.camera_info.K)

    def __iter__(self) -> Iterator[Frame]:
        return _taken(self)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if self._on_close is not None:
            self._on_close()


class PushSource:
    """A live source fed from callbacks (the ROS node's subscribers): `push(item)` from any thread, the camera node
    takes items oldest first. When `capacity` items wait, the oldest is dropped and counted (`counts`), so a slow
    backend never falls further and further behind the feed.

    `to_frame(item, seq)` turns an item into a Frame in the taking thread (decoding stays off the callback thread) or
    returns None for an item that cannot be used (the caller counts why); `seq` is the item's push index, so a gap
    downstream shows a drop. `camera_info` may be replaced while streaming (a new CameraInfo message); the camera node
    undistorts each frame with the one current when it is sent. `close()` ends the feed once the waiting items are
    taken.
    """

    live = True

    def __init__(self, name: str, to_frame: Callable[[Any, int], Frame | None], capacity: int = 1,
                 camera_info: CameraInfo | None = None) -> None:
        if capacity < 1:
            raise ConfigError(f"push source {name}: capacity must be >= 1, got {capacity}")
        self.name = name
        self.camera_info = camera_info
        self.capacity = capacity
        self._to_frame = to_frame
        self._items: collections.deque[tuple[int, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.captured = 0
        self.drops = 0

    def __str__(self) -> str:
        return f"PushSource({self.name})"

    def push(self, item: Any) -> int:
        """Queue `item` (dropping the oldest waiting one when full); returns its seq, -1 after `close()`."""
        with self._cond:
            if self._closed:
                return -1
            seq = self.captured
            self.captured += 1
            self._items.append((seq, item))
            if len(self._items) > self.capacity:
                self._items.popleft()
                self.drops += 1
            self._cond.notify_all()
            return seq

    def wait_frame(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for an item (or the close); True when one waits."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout_s)
            return bool(self._items)

    def take(self, timeout_s: float) -> Frame | None:
        """The oldest waiting item as a Frame, waiting up to `timeout_s` for one; None when there is none (or
        `to_frame` refused it)."""
        with self._cond:
            if not self._items and not self._closed and timeout_s > 0:
                self._cond.wait(timeout_s)
            if not self._items:
                return None
            seq, item = self._items.popleft()
        return self._to_frame(item, seq)

    def counts(self) -> tuple[int, int]:
        """(pushed, dropped); items still waiting count as dropped, so pushed == sent + dropped for whoever stops
        taking now."""
        with self._cond:
            return self.captured, self.drops + len(self._items)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def finished(self) -> bool:
        """True once closed and every waiting item was taken."""
        with self._cond:
            return self._closed and not self._items

    def __iter__(self) -> Iterator[Frame]:
        return _taken(self)

    def close(self) -> None:
        """No more pushes; what waits is still taken (a clean stop processes it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def open_camera(spec: str, fps: float | None = None, camera_info: CameraInfo | None = None) -> LiveSource:
    """A live OpenCV camera (index or device path)."""
    import cv2

    from recon.utils.log import opencv_silenced

    with opencv_silenced():  # its "[ WARN ] can't open camera by index" lines would precede our own error
        cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
    if not cap.isOpened():
        raise SequenceError(f"cannot open camera {spec!r} with OpenCV (is it connected? try another index)")
    if fps:
        cap.set(cv2.CAP_PROP_FPS, fps)

    def grab() -> np.ndarray | None:
        ok, bgr = cap.read()
        if not ok:
            raise CorruptFrameError(f"camera {spec}: read failed")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    return LiveSource(f"camera{spec}", grab, camera_info, on_close=cap.release)


def as_live(source: Source, fps: float) -> LiveSource:
    """Play a recorded source in real time at `fps` as if it were a camera (latest-frame-wins, drops counted)."""
    frames = iter(source)
    period = 1.0 / fps
    next_t = [time.monotonic()]

    def grab() -> np.ndarray | None:
        delay = next_t[0] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next_t[0] = max(next_t[0] + period, time.monotonic() - period)
        f = next(frames, None)
        return None if f is None else f.image

    return LiveSource(getattr(source, "name", "live"), grab, source.camera_info, on_close=source.close)


class SequenceSource:
    """A recorded sequence from recon.datasets (video file, image folder, dataset folder, ROS bag).

    A given `camera_info` replaces the reader's own (fitted to the image size, see
    `recon.datasets.base.CalibratedSequence`).
    """

    live = False

    def __init__(self, path: str, camera_info: CameraInfo | None = None, on_error: str | None = None,
                 **topics: str | None) -> None:
        from recon.datasets import open_sequence
        from recon.datasets.base import CalibratedSequence, OnError

        options: dict[str, Any] = {k: v for k, v in topics.items() if v is not None}
        if on_error is not None:
            options["on_error"] = OnError(on_error)
        self.seq = opener = open_sequence(path, **options)
        if camera_info is not None:
            self.seq = CalibratedSequence(opener, camera_info)
        self.camera_info = getattr(self.seq, "camera_info", None)
        self.drops = 0
        self.name = getattr(self.seq, "name", Path(path).stem)

    def __len__(self) -> int:
        return len(self.seq)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.seq)

    def close(self) -> None:
        close = getattr(self.seq, "close", None)
        if callable(close):
            close()


def load_camera_info(path: str) -> CameraInfo:
    """`--camera-info FILE`: any calibration file recon.calib reads (ROS camera_info YAML, OpenCV FileStorage,
    camera.json, plain text) that states the image size."""
    from recon.calib import load_camera_info as load

    try:
        return load(path)
    except SequenceError as e:
        raise ConfigError(f"--camera-info {path}: {e}") from e


class PatternSource:
    """`pattern:COUNT:WxH`: generated frames (a moving gradient with noise) for tests and benchmarks.

    Needs no files and no camera; deterministic for a given size and count. `live` plays it at
    `fps` with latest-frame-wins (see `as_live`).
    """

    live = False

    def __init__(self, count: int, width: int, height: int, seed: int = 0) -> None:
        if count < 0 or not (1 <= width <= 8192 and 1 <= height <= 8192):
            raise ConfigError(f"pattern source: bad count/size {count} {width}x{height}")
        self.count, self.width, self.height = count, width, height
        self.name = f"pattern{width}x{height}"
        self.drops = 0
        f = float(width)
        self.camera_info = CameraInfo(width, height, [[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
        rng = np.random.default_rng(seed)
        self._noise = rng.integers(0, 32, (height, width, 3), dtype=np.uint8)
        self._ramp = (np.arange(width, dtype=np.uint16)[None, :, None] * 255 // max(1, width - 1)).astype(np.uint8)

    def __len__(self) -> int:
        return self.count

    def image(self, i: int) -> np.ndarray:
        img = np.roll(self._ramp, 7 * i, axis=1) + self._noise
        return np.broadcast_to(img, (self.height, self.width, 3)).copy()

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.count):
            yield Frame(self.name, i, time.time_ns(), self.image(i), K=self.camera_info.K)

    def close(self) -> None:
        pass


def parse_pattern(spec: str) -> PatternSource:
    """`pattern:COUNT:WxH` -> PatternSource."""
    try:
        _, count, size = spec.split(":")
        w, h = size.lower().split("x")
        return PatternSource(int(count), int(w), int(h))
    except ValueError as e:
        raise ConfigError(f"--source {spec}: expected pattern:COUNT:WxH, e.g. pattern:100:640x480") from e


def open_source(spec: str, *, fps: float | None = None, camera_info: CameraInfo | None = None,
                topic: str | None = None, camera_info_topic: str | None = None, depth_topic: str | None = None,
                on_error: str | None = None) -> Source:
    """Open SRC as described in the module docstring (the topics apply to bags only)."""
    if _is_device(spec):
        return open_camera(spec, fps=fps, camera_info=camera_info)
    if spec.startswith("pattern:"):
        return parse_pattern(spec)
    p = Path(spec)
    if not p.exists():
        raise ConfigError(f"--source {spec}: no such file or folder, and not a camera index")
    return SequenceSource(spec, camera_info, on_error, topic=topic, depth_topic=depth_topic,
                          camera_info_topic=camera_info_topic)
