"""ROS bags as sequences: ROS 1 `.bag`, rosbag2 folders (sqlite3 or MCAP storage) and rosbag2 `.mcap` files.

Read with `rosbags` (no ROS installation needed), lazily, in log-time order; messages are decoded by the one ROS
codec `recon.datasets.ros_msgs`, shared with the ROS node.

Topics, when not given (`topic`, `depth_topic`, `camera_info_topic`), are chosen by message type and content, not
by their order in the bag:
- colour: the Image / CompressedImage topic whose first message is a colour encoding (not 16UC1 / 32FC1 /
  compressedDepth), preferring colour over mono encodings and names with `color` / `rgb` over `ir` / `infra`;
- depth: a depth topic (16UC1 / 32FC1 Image, compressedDepth) registered to the colour image: same header frame_id,
  or `aligned` / `registered` in its name. Unregistered depth is not pixel-aligned with the colour image, so it is
  left out (with a warning naming it; pass `depth_topic` to use it anyway). `depth_topic=""` means none;
- camera info: the CameraInfo topic sharing the longest namespace with the colour topic.

Each colour image is paired with the depth image nearest in header stamp within `max_diff_s` (one-to-one); colour
images without one are left out and counted, like the TUM reader does. A CameraInfo stated for another image size
is scaled to the images (with a warning); its distortion stays in `camera_info` (the camera node undistorts).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recon.datasets.base import OnError, ReadStats, fit_camera_info, skip_or_raise
from recon.datasets.ros_msgs import (
    CAMERA_INFO_TYPE,
    IMAGE_TYPES,
    camera_info_from_msg,
    decode_depth,
    decode_image,
    header_stamp_ns,
    image_msg_encoding,
    is_depth_message,
)
from recon.errors import ConfigError, CorruptFrameError, ProtocolError, SequenceError
from recon.io.images import corrupt_frame
from recon.types import CameraInfo, Frame
from recon.utils.imports import require_package

logger = logging.getLogger(__name__)

BAG_SUFFIXES = (".bag", ".mcap", ".db3")
_MONO = ("mono8", "mono16", "8UC1")
# Wait this much past a colour image's stamp for a later depth message before giving up on pairing it.
_PAIR_HORIZON_NS = 500_000_000


def is_bag(path: Path) -> bool:
    """True for a ROS 1 bag, an MCAP / sqlite3 rosbag2 file, or a rosbag2 folder (with metadata.yaml)."""
    return (path.is_file() and path.suffix.lower() in BAG_SUFFIXES) or (
        path.is_dir() and (path / "metadata.yaml").is_file())


def _reader_paths(path: Path) -> list[Path]:
    """What rosbags opens: a .bag file, or the rosbag2 folder of a .mcap / .db3 file that has a metadata.yaml."""
    if path.is_file() and path.suffix.lower() in (".mcap", ".db3") and (path.parent / "metadata.yaml").is_file():
        return [path.parent]
    return [path]


@dataclass
class _Topic:
    """One image topic of the bag: its connections, what its first message is, and how many messages it has."""

    name: str
    msgtype: str
    connections: list[Any]
    count: int
    encoding: str = ""
    depth: bool = False
    frame_id: str = ""
    size: tuple[int, int] | None = None  # (width, height) of raw images (compressed ones: decoded on demand)

    def describe(self) -> str:
        return f"{self.name} ({self.msgtype.rsplit('/', 1)[-1]} {self.encoding}, {self.count} messages)"


class BagSequence:
    """A bag as a lazy sequence of RGB(-D) frames; `close()` releases the file.

    Args:
        path: `.bag`, `.mcap`, `.db3`, or a rosbag2 folder.
        topic, depth_topic, camera_info_topic: override the choice described in the module doc (`depth_topic=""`
            or `camera_info_topic=""`: none).
        camera_info: calibration to use instead of the bag's CameraInfo (scaled to the images if needed).
        depth_scale: metres per unit of 16-bit depth (0.001: millimetres, the ROS convention).
        max_diff_s: largest colour-to-depth stamp difference of a pair.
    """

    ground_truth = None

    def __init__(self, path: str | Path, *, topic: str | None = None, depth_topic: str | None = None,
                 camera_info_topic: str | None = None, camera_info: CameraInfo | None = None,
                 on_error: OnError = OnError.STOP, stride: int = 1, max_frames: int | None = None,
                 depth_scale: float = 0.001, max_diff_s: float = 0.02) -> None:
        require_package("rosbags", extra="ros")
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        if stride < 1:
            raise ConfigError(f"stride must be >= 1, got {stride}")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"max_frames must be >= 1, got {max_frames}")
        if not depth_scale > 0 or max_diff_s < 0:
            raise ConfigError(f"depth_scale must be > 0 and max_diff_s >= 0, got {depth_scale}, {max_diff_s}")
        self.path = Path(path)
        self.name = self.path.stem if self.path.is_file() else self.path.name
        self.on_error = OnError(on_error)
        self.stride, self.max_frames = stride, max_frames
        self.depth_scale = depth_scale
        self.max_diff_ns = round(max_diff_s * 1e9)
        self.stats = ReadStats()
        self.frames_without_depth = 0
        try:
            # Bags without embedded definitions (ROS 2 sqlite3) are read with the ROS 2 Humble message types.
            self.reader = AnyReader(_reader_paths(self.path), default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            self.reader.open()
        except Exception as e:  # rosbags raises its own reader errors for every kind of damage
            raise SequenceError(f"cannot open bag {self.path}: {e}") from e
        try:
            self._choose_topics(topic, depth_topic, camera_info_topic, camera_info)
        except Exception:
            self.reader.close()
            raise

    # ------------------------------------------------------------------------------------------ topics

    def _image_topics(self) -> list[_Topic]:
        by_topic: dict[str, _Topic] = {}
        for c in self.reader.connections:
            if c.msgtype not in IMAGE_TYPES:
                continue
            t = by_topic.setdefault(c.topic, _Topic(c.topic, c.msgtype, [], 0))
            t.connections.append(c)
            t.count += int(c.msgcount)
        for t in by_topic.values():
            msg = self._first(t.connections)
            if msg is None:
                continue
            t.encoding = image_msg_encoding(msg)
            t.depth = is_depth_message(msg)
            t.frame_id = str(getattr(getattr(msg, "header", None), "frame_id", "") or "")
            if hasattr(msg, "width"):
                t.size = (int(msg.width), int(msg.height))
        return [t for t in by_topic.values() if t.count > 0]

    def _first(self, connections: list[Any]) -> Any | None:
        for c, _t, raw in self.reader.messages(connections=connections):
            try:
                return self.reader.deserialize(raw, c.msgtype)
            except Exception as e:  # a damaged first message: the topic is reported, not chosen
                logger.warning("%s: cannot read the first message on %s: %s", self.path, c.topic, e)
                return None
        return None

    def _topic_listing(self) -> str:
        return ", ".join(sorted({f"{c.topic} ({c.msgtype})" for c in self.reader.connections})) or "none"

    def _choose_topics(self, topic: str | None, depth_topic: str | None, camera_info_topic: str | None,
                       camera_info: CameraInfo | None) -> None:
        images = self._image_topics()
        by_name = {t.name: t for t in images}
        if topic:
            if topic not in by_name:
                raise SequenceError(f"{self.path}: no Image/CompressedImage topic {topic!r} (topics: "
                                    f"{self._topic_listing()})")
            colour = by_name[topic]
            if colour.depth:
                raise SequenceError(f"{self.path}: {topic} carries depth ({colour.encoding}); give it as the depth "
                                    "topic and name a colour topic")
        else:
            candidates = [t for t in images if not t.depth]
            if not candidates:
                raise SequenceError(f"{self.path}: no colour image topic (Image or CompressedImage with a colour "
                                    f"encoding); topics found: {self._topic_listing()}")
            colour = max(candidates, key=_colour_preference)
            if len(candidates) > 1:
                others = ", ".join(t.describe() for t in candidates if t is not colour)
                logger.info("%s: several colour topics, using %s (others: %s; choose with --topic)", self.path,
                            colour.name, others)
        self.colour = colour
        self.topic = colour.name
        self.depth = self._choose_depth(images, colour, depth_topic, by_name)
        self.depth_topic = self.depth.name if self.depth else None
        self.has_depth = self.depth is not None
        self._size = colour.size or self._decoded_size(colour)
        self.camera_info_topic: str | None = None
        info = camera_info or self._bag_camera_info(camera_info_topic)
        self.camera_info = fit_camera_info(info, self._size, str(self.path)) if info is not None else None
        logger.info("bag %s: colour %s%s, camera info %s", self.path, colour.describe(),
                    f", depth {self.depth.describe()}" if self.depth else " (no depth: monocular)",
                    "from the command line" if camera_info is not None else (self.camera_info_topic or "none"))

    def _choose_depth(self, images: list[_Topic], colour: _Topic, depth_topic: str | None,
                      by_name: dict[str, _Topic]) -> _Topic | None:
        if depth_topic == "":
            return None
        if depth_topic is not None:
            if depth_topic not in by_name or not by_name[depth_topic].depth:
                depths = ", ".join(t.describe() for t in images if t.depth) or "none"
                raise SequenceError(f"{self.path}: {depth_topic!r} is not a depth image topic (16UC1 / 32FC1 / "
                                    f"compressedDepth); depth topics: {depths}; topics: {self._topic_listing()}")
            return by_name[depth_topic]
        depths = [t for t in images if t.depth]
        registered = [t for t in depths if _registered_to(t, colour)]
        if registered:
            return max(registered, key=lambda t: (any(k in t.name for k in ("aligned", "registered")), t.count))
        if depths:
            logger.warning("%s: depth topics %s are not registered to %s (other frame_id, not 'aligned' or "
                           "'registered'): running without depth; pass the depth topic to use one anyway",
                           self.path, ", ".join(t.describe() for t in depths), colour.name)
        return None

    def _decoded_size(self, t: _Topic) -> tuple[int, int] | None:
        msg = self._first(t.connections)
        try:
            img = decode_image(msg) if msg is not None else None
        except ProtocolError:
            return None
        return None if img is None else (int(img.shape[1]), int(img.shape[0]))

    def _bag_camera_info(self, camera_info_topic: str | None) -> CameraInfo | None:
        infos = [c for c in self.reader.connections if c.msgtype == CAMERA_INFO_TYPE]
        if camera_info_topic == "" or not infos:
            return None
        if camera_info_topic is None:
            # The CameraInfo topic sharing the longest namespace with the image topic
            # (`/cam/color/image_raw/compressed` -> `/cam/color/camera_info`).
            camera_info_topic = max(infos, key=lambda c: len(os.path.commonprefix([c.topic, self.topic]))).topic
        conns = [c for c in infos if c.topic == camera_info_topic]
        if not conns:
            raise SequenceError(f"{self.path}: no CameraInfo topic {camera_info_topic!r} (topics: "
                                f"{self._topic_listing()})")
        msg = self._first(conns)
        if msg is None:
            return None
        try:
            info = camera_info_from_msg(msg)
        except ProtocolError as e:
            raise SequenceError(f"{self.path}: {camera_info_topic}: {e}") from e
        self.camera_info_topic = camera_info_topic
        return info

    # ------------------------------------------------------------------------------------------ frames

    def __len__(self) -> int:
        """Colour messages after stride and max_frames (an upper bound with depth: unpaired images are left out)."""
        n = len(range(0, self.colour.count, self.stride))
        return n if self.max_frames is None else min(n, self.max_frames)

    def _messages(self) -> Iterator[tuple[bool, int, Any, str]]:
        """(is_depth, header stamp ns, message, where) in log-time order, deserialised (pixels not decoded)."""
        conns = list(self.colour.connections) + (list(self.depth.connections) if self.depth else [])
        depth_ids = {id(c) for c in self.depth.connections} if self.depth else set()
        counters = {True: -1, False: -1}
        for c, t_log, raw in self.reader.messages(connections=conns):
            is_depth = id(c) in depth_ids
            counters[is_depth] += 1
            where = f"{self.path}:{c.topic}#{counters[is_depth]}"
            try:
                msg = self.reader.deserialize(raw, c.msgtype)
            except Exception as e:  # truncated or garbled message bytes
                yield is_depth, int(t_log), corrupt_frame(where, f"cannot deserialise {c.msgtype} ({e})"), where
                continue
            yield is_depth, header_stamp_ns(msg, int(t_log)), msg, where

    def _paired(self) -> Iterator[tuple[int, Any, Any | None, str]]:
        """(index, colour message, depth message or None, where) in order; with depth, each colour image takes
        the unused depth nearest in stamp within max_diff, looked for until the stream is _PAIR_HORIZON_NS past
        it (so buffers stay bounded when the depth topic stops)."""
        if self.depth is None:
            index = -1
            for is_depth, t_ns, msg, where in self._messages():
                if not is_depth:
                    index += 1
                    yield index, (t_ns, msg), None, where
            return
        colour: deque[tuple[int, int, Any, str]] = deque()
        depth: deque[tuple[int, Any]] = deque()
        index = -1
        newest = -(1 << 62)

        def pop_ready(final: bool) -> Iterator[tuple[int, Any, Any | None, str]]:
            while colour:
                i, t_c, msg, where = colour[0]
                later_depth = any(t_d > t_c + self.max_diff_ns for t_d, _ in depth)
                if not (final or later_depth or newest > t_c + _PAIR_HORIZON_NS):
                    return
                colour.popleft()
                near = [(abs(t_d - t_c), k) for k, (t_d, _) in enumerate(depth) if abs(t_d - t_c) <= self.max_diff_ns]
                match = None
                if near:
                    _, k = min(near)
                    match = depth[k][1]
                    del depth[k]
                while depth and depth[0][0] < t_c - self.max_diff_ns:
                    depth.popleft()  # too old for this and every later colour image
                yield i, (t_c, msg), match, where

        for is_depth, t_ns, msg, where in self._messages():
            newest = max(newest, t_ns)
            if is_depth:
                if not isinstance(msg, Exception):
                    depth.append((t_ns, msg))
            else:
                index += 1
                colour.append((index, t_ns, msg, where))
            yield from pop_ready(False)
        yield from pop_ready(True)

    def _frame(self, seq: int, index: int, t_ns: int, msg: Any, depth_msg: Any | None, where: str) -> Frame:
        if isinstance(msg, Exception):
            raise msg
        try:
            image = decode_image(msg)
        except ProtocolError as e:
            raise corrupt_frame(where, str(e)) from e
        depth = None
        if depth_msg is not None:
            try:
                depth = decode_depth(depth_msg, self.depth_scale)
            except ProtocolError as e:
                raise corrupt_frame(where, f"its depth image: {e}") from e
            if depth.shape != image.shape[:2]:
                import cv2

                depth = cv2.resize(depth, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        K = None
        if self.camera_info is not None:
            h, w = image.shape[:2]
            info = self.camera_info if (self.camera_info.width, self.camera_info.height) == (w, h) \
                else self.camera_info.scaled(w, h)
            K = info.K
        meta = {"path": where, "index": index, "topic": self.topic,
                "frame_id": str(getattr(getattr(msg, "header", None), "frame_id", "") or "")}
        return Frame(self.name, seq, int(t_ns), image, K, depth, meta)

    def __iter__(self) -> Iterator[Frame]:
        self.stats.frames_read = 0
        self.stats.frames_skipped = 0
        self.stats.skipped_paths.clear()
        self.frames_without_depth = 0
        seq = 0
        size_warned = False
        for index, (t_ns, msg), depth_msg, where in self._paired():
            if index % self.stride:
                continue
            if self.max_frames is not None and seq >= self.max_frames:
                break
            if self.depth is not None and depth_msg is None and not isinstance(msg, Exception):
                self.frames_without_depth += 1
                continue
            try:
                frame = self._frame(seq, index, t_ns, msg, depth_msg, where)
            except CorruptFrameError as e:
                skip_or_raise(self.stats, self.on_error, self.name, index, e)
                seq += 1
                continue
            if frame.depth is not None and depth_msg is not None and not size_warned and \
                    _shape_of(depth_msg) not in (None, frame.depth.shape):
                size_warned = True
                logger.warning("%s: depth images are %s, colour %s: depth resampled (nearest) to the colour grid",
                               self.name, _shape_of(depth_msg), frame.depth.shape)
            self.stats.frames_read += 1
            seq += 1
            yield frame
        if self.frames_without_depth:
            logger.info("%s: %d colour images have no depth image within %.3f s on %s and are left out", self.name,
                        self.frames_without_depth, self.max_diff_ns / 1e9, self.depth_topic)

    def close(self) -> None:
        self.reader.close()

    def __repr__(self) -> str:
        return f"BagSequence({str(self.path)!r}, topic={self.topic!r}, depth={self.depth_topic!r})"


def _shape_of(msg: Any) -> tuple[int, int] | None:
    return (int(msg.height), int(msg.width)) if hasattr(msg, "height") and int(getattr(msg, "height", 0)) else None


def _colour_preference(t: _Topic) -> tuple[int, int, int, int]:
    name = t.name.lower()
    colour_name = any(k in name for k in ("color", "colour", "rgb"))
    ir_name = any(k in name for k in ("infra", "/ir", "_ir", "mono", "depth"))
    return (int(t.encoding not in _MONO), int(colour_name) - int(ir_name), int("compressed" not in name), t.count)


def _registered_to(depth: _Topic, colour: _Topic) -> bool:
    """Whether a depth topic is pixel-aligned with the colour topic (same optical frame, or named so)."""
    name = depth.name.lower()
    if any(k in name for k in ("aligned", "registered")):
        return True
    return bool(depth.frame_id) and depth.frame_id == colour.frame_id


