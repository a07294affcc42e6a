"""Frame sources for the camera node: live cameras (OpenCV), recorded sequences, and ROS bags / MCAP.

`open_source(spec)` picks by the spec's shape:

- an integer (`0`) or a device path (`/dev/video0`): a live OpenCV camera. A capture thread keeps only
  the newest frame, stamped at capture (`time.time_ns()` right after the grab); overwritten frames are
  counted as drops;
- a `.bag` / `.mcap` file, or a rosbag2 folder (with `metadata.yaml`): read with `rosbags`
  (sensor_msgs Image / CompressedImage, plus CameraInfo); stamps come from the message headers;
- `pattern:COUNT:WxH`: generated frames, for tests and benchmarks;
- anything else (video file, image folder, dataset folder): `recon.datasets.open_sequence(path)`.

Recorded sources are iterated in order and never drop a frame: the camera node paces them with credits.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recon.errors import ConfigError, CorruptFrameError, SequenceError
from recon.types import CameraInfo, Frame
from recon.utils.imports import require_package

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

    def __iter__(self) -> Iterator[Frame]:
        K = None if self.camera_info is None else self.camera_info.K
        while not self.finished:
            got = self.read_latest(0.5)
            if got is not None:
                yield Frame(self.name, got[2], got[1], got[0], K=K)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if self._on_close is not None:
            self._on_close()


def open_camera(spec: str, fps: float | None = None, camera_info: CameraInfo | None = None) -> LiveSource:
    """A live OpenCV camera (index or device path)."""
    import cv2

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
    """A recorded sequence from recon.datasets (video file, image folder, dataset folder)."""

    live = False

    def __init__(self, path: str, camera_info: CameraInfo | None = None, on_error: str | None = None) -> None:
        from recon import datasets

        opener = getattr(datasets, "open_sequence", None)
        if opener is None:
            raise SequenceError(f"cannot read {path}: recon.datasets.open_sequence is not available in this build")
        if on_error is None:
            self.seq = opener(path)
        else:
            from recon.datasets.base import OnError

            self.seq = opener(path, on_error=OnError(on_error))
        self.camera_info = camera_info or getattr(self.seq, "camera_info", None)
        self.drops = 0
        self.name = getattr(self.seq, "name", Path(path).stem)

    def __len__(self) -> int:
        return len(self.seq)

    def __iter__(self) -> Iterator[Frame]:
        K = None if self.camera_info is None else self.camera_info.K
        for f in self.seq:
            if f.K is None and K is not None:
                f.K = K
            yield f

    def close(self) -> None:
        close = getattr(self.seq, "close", None)
        if callable(close):
            close()


_IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


def _stamp_ns(msg: Any, fallback: int) -> int:
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    if stamp is None:
        return fallback
    return int(stamp.sec) * 1_000_000_000 + int(getattr(stamp, "nanosec", getattr(stamp, "nsec", 0)))


def ros_image_to_rgb(msg: Any, msgtype: str) -> np.ndarray:
    """RGB uint8 HxWx3 from a sensor_msgs Image (rgb8/bgr8/rgba8/bgra8/mono8) or CompressedImage."""
    import cv2

    if msgtype.endswith("CompressedImage"):
        bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CorruptFrameError(f"cannot decode CompressedImage ({msg.format})")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    enc = str(msg.encoding).lower()
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}.get(enc)
    if channels is None:
        raise CorruptFrameError(f"unsupported Image encoding {msg.encoding!r} (rgb8, bgr8, rgba8, bgra8, mono8)")
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if step < w * channels or data.size < h * step:
        raise CorruptFrameError(f"Image data of {data.size} bytes too small for {w}x{h} {enc} step {step}")
    img = data[: h * step].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if enc.startswith("bgr") or enc == "8uc3":
        img = img[..., 2::-1]
    return np.ascontiguousarray(img[..., :3])


def ros_camera_info(msg: Any) -> CameraInfo:
    """CameraInfo from a sensor_msgs CameraInfo (ROS 2 lowercase or ROS 1 uppercase field names)."""
    K = np.asarray(getattr(msg, "k", getattr(msg, "K", None)), dtype=np.float64).reshape(3, 3)
    D = np.asarray(getattr(msg, "d", getattr(msg, "D", [])), dtype=np.float64)
    frame_id = str(getattr(getattr(msg, "header", None), "frame_id", "") or "camera")
    return CameraInfo(int(msg.width), int(msg.height), K, D, frame_id)


class RosbagSource:
    """Images (and CameraInfo) from a ROS 1 bag, a rosbag2 folder or an MCAP file, in log-time order."""

    live = False

    def __init__(self, path: str, topic: str | None = None, camera_info_topic: str | None = None,
                 camera_info: CameraInfo | None = None) -> None:
        require_package("rosbags", extra="ros")
        from rosbags.highlevel import AnyReader

        self.path = Path(path)
        self.drops = 0
        self.name = self.path.stem
        paths = [self.path.parent] if self.path.suffix == ".mcap" and (self.path.parent / "metadata.yaml").exists() \
            else [self.path]
        try:
            self.reader = AnyReader(paths)
            self.reader.open()
        except Exception as e:
            raise SequenceError(f"cannot open bag {path}: {e}") from e
        conns = self.reader.connections
        images = [c for c in conns if c.msgtype in _IMAGE_TYPES and (topic is None or c.topic == topic)]
        if not images:
            found = ", ".join(sorted({f"{c.topic} ({c.msgtype})" for c in conns}))
            raise SequenceError(f"{path}: no Image/CompressedImage topic {topic or ''} (topics: {found})")
        self.image_conn = images[0]
        self.topic = self.image_conn.topic
        infos = [c for c in conns if c.msgtype == _INFO_TYPE]
        if camera_info_topic is None and infos:
            # Default: the CameraInfo topic sharing the longest namespace with the image topic
            # (`/cam/image_raw/compressed` -> `/cam/camera_info`).
            camera_info_topic = max(infos, key=lambda c: len(os.path.commonprefix([c.topic, self.topic]))).topic
        self.info_conns = [c for c in infos if c.topic == camera_info_topic]
        self.camera_info = camera_info
        self._count = self.image_conn.msgcount
        if self.camera_info is None and self.info_conns:
            for c, _t, raw in self.reader.messages(connections=self.info_conns[:1]):
                self.camera_info = ros_camera_info(self.reader.deserialize(raw, c.msgtype))
                break
        logger.info("bag %s: topic %s (%s), %d messages, camera_info %s", path, self.topic, self.image_conn.msgtype,
                    self._count, "yes" if self.camera_info else "no")

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Frame]:
        K = None if self.camera_info is None else self.camera_info.K
        for seq, (c, t_log, raw) in enumerate(self.reader.messages(connections=[self.image_conn])):
            msg = self.reader.deserialize(raw, c.msgtype)
            yield Frame(self.name, seq, _stamp_ns(msg, int(t_log)), ros_image_to_rgb(msg, c.msgtype), K=K)

    def close(self) -> None:
        self.reader.close()


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
                topic: str | None = None, camera_info_topic: str | None = None, on_error: str | None = None) -> Source:
    """Open SRC as described in the module docstring."""
    if _is_device(spec):
        return open_camera(spec, fps=fps, camera_info=camera_info)
    if spec.startswith("pattern:"):
        return parse_pattern(spec)
    p = Path(spec)
    if not p.exists():
        raise ConfigError(f"--source {spec}: no such file or folder, and not a camera index")
    if p.suffix in (".bag", ".mcap") or (p.is_dir() and (p / "metadata.yaml").exists()):
        return RosbagSource(spec, topic, camera_info_topic, camera_info)
    return SequenceSource(spec, camera_info, on_error)
