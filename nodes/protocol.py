"""Wire protocol v1 of the recon nodes (DESIGN.md §6; documented in docs/protocol.md).

A message is a ZeroMQ multipart:

    [topic] [header] [payload 0] [payload 1] ...

- `topic`: short ASCII bytes used for PUB/SUB filtering (`frame/<stream_id>`, `result/<stream_id>`, `ctl`).
- `header`: a msgpack map. Common fields are in `COMMON_FIELDS`; each kind adds its own (`KINDS`). `payloads`
  lists one descriptor per following frame (`PAYLOAD_FIELDS`): name, encoding, dtype, shape, nbytes.
- payload frames: raw C-contiguous little-endian arrays (sent with copy=False), or JPEG / PNG bytes.

The schema is defined once, here, as tables whose docs give units, frames and layout; docs/protocol.md
is written from them. The decoder validates the header and checks every declared size against
`Limits` *before* it allocates anything, and raises ProtocolError (IncompatibleVersionError for an
unknown major version). No pickle, ever: headers are msgpack with limits, payloads are plain bytes.

Compatibility rule: fields are only ever added (a reader ignores fields it does not know); removing or
changing the meaning of a field bumps the major version `v` and the `/vN` suffix of the kinds.
"""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from recon.errors import ConfigError, IncompatibleVersionError, ProtocolError
from recon.types import Frame, FrameResult

VERSION = 1
"""Major version of the wire protocol (header field `v`)."""

FRAME = "recon/frame/v1"
RESULT = "recon/result/v1"
CREDIT = "recon/credit/v1"
RESET = "recon/reset/v1"
HEARTBEAT = "recon/heartbeat/v1"
REFUSE = "recon/refuse/v1"

TOPIC_FRAME = b"frame/"
TOPIC_RESULT = b"result/"
TOPIC_CONTROL = b"ctl"


@dataclass(frozen=True)
class FieldSpec:
    """One header field: msgpack type(s), whether it is required, and what it means (units, frames)."""

    name: str
    types: tuple[type, ...]
    required: bool
    doc: str


@dataclass(frozen=True)
class PayloadSpec:
    """One payload a kind may carry.

    Attributes:
        name: payload name in the header descriptor.
        dtypes: allowed little-endian numpy dtype strings for raw payloads.
        encodings: allowed encodings (`raw`, `jpeg`, `png`).
        shape: symbolic shape; ints are fixed, "H"/"W" are image-sized dims checked against Limits.
        doc: meaning, units and frame.
    """

    name: str
    dtypes: tuple[str, ...]
    encodings: tuple[str, ...]
    shape: tuple[int | str, ...]
    doc: str


@dataclass(frozen=True)
class KindSpec:
    """A message kind: its extra header fields and the payloads it may carry."""

    kind: str
    doc: str
    fields: tuple[FieldSpec, ...] = ()
    payloads: tuple[PayloadSpec, ...] = ()


_INT = (int,)
_STR = (str,)

COMMON_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("v", _INT, True, "major protocol version; a reader rejects a major version it does not know"),
    FieldSpec("kind", _STR, True, "versioned message kind, e.g. 'recon/frame/v1' (table KINDS)"),
    FieldSpec("stream_id", _STR, True, "camera stream name (1-128 printable characters); '' for node-wide control"),
    FieldSpec("seq", _INT, True, "per-stream sequence number of the frame (>= 0; -1 for control messages)"),
    FieldSpec("t_ns", _INT, True, "capture time of the frame in integer nanoseconds (sender clock for control)"),
    FieldSpec("payloads", (list,), True, "one descriptor per payload frame, in order (table PAYLOAD_FIELDS)"),
)

PAYLOAD_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("name", _STR, True, "payload name from the kind's table (image, depth, K, T_world_cam, ...)"),
    FieldSpec("encoding", _STR, True, "'raw' (C-contiguous little-endian array), 'jpeg' or 'png'"),
    FieldSpec("dtype", _STR, True, "numpy dtype string of the (decoded) array, little-endian: '|u1', '<u2', '<f4'..."),
    FieldSpec("shape", (list,), True, "shape of the (decoded) array, row-major"),
    FieldSpec("nbytes", _INT, True, "byte length of the payload frame as sent (compressed size for jpeg/png)"),
)

_IMAGE_DTYPES = ("|u1",)
_F = ("<f4",)
_F16_32 = ("<f2", "<f4")

KINDS: dict[str, KindSpec] = {
    FRAME: KindSpec(
        FRAME,
        "one captured image, camera -> reconstruction node (DEALER -> ROUTER)",
        fields=(
            FieldSpec("epoch", _INT, False, "random id of the sender process; seq dedupe is per (stream_id, epoch)"),
            FieldSpec("live", (bool,), False, "true for a live camera (latest-frame-wins), false for recorded data"),
            FieldSpec("depth_scale", (float, int), False, "metres per unit of a uint16 depth payload (e.g. 0.001)"),
            FieldSpec("frame_id", _STR, False, "camera optical frame name (ROS / Rerun entity naming)"),
            FieldSpec("capture_ns", _INT, False, "wall-clock time (sender clock, ns) the frame was captured (live) or "
                                                 "read from its recording; latency is measured from it (default "
                                                 "t_ns)"),
        ),
        payloads=(
            PayloadSpec("image", _IMAGE_DTYPES, ("raw", "jpeg", "png"), ("H", "W", 3),
                        "RGB colour image, uint8 HxWx3, row-major, channel order R,G,B"),
            PayloadSpec("depth", ("<u2", "<f4"), ("raw", "png"), ("H", "W"),
                        "depth along the optical axis, same grid as image; float32 metres, or uint16 times "
                        "depth_scale metres; 0 = invalid (NaN, infinite and negative values are read as 0)"),
            PayloadSpec("K", ("<f8",), ("raw",), (3, 3),
                        "pinhole intrinsics in pixels of image, row-major [[fx,s,cx],[0,fy,cy],[0,0,1]]: finite, "
                        "0 < fx, fy <= 1000 max(W, H), |s| <= fx, principal point within 10 max(W, H) of the "
                        "image"),
        ),
    ),
    RESULT: KindSpec(
        RESULT,
        "what the backend produced for one frame, reconstruction node -> subscribers (PUB -> SUB)",
        fields=(
            FieldSpec("metric", (bool,), True, "true when depth, points and translation are in metres"),
            FieldSpec("is_update", (bool,), False, "true when this revises a pose already sent for the same seq"),
            FieldSpec("tracked", (bool,), False, "false when the backend has no pose estimate for this frame "
                                                 "(T_world_cam is a placeholder; default true)"),
            FieldSpec("stride", _INT, False, "per-pixel payloads are subsampled [::stride, ::stride] (default 1); "
                                             "K still refers to the full result grid"),
            FieldSpec("epoch", _INT, False, "epoch of the frame this result belongs to"),
            FieldSpec("session", _INT, False, "session number of the stream on the node (increments on reset)"),
            FieldSpec("map_epoch", _INT, False, "random id of the world frame the pose is in; it changes exactly "
                                                "when the stream's world frame does (reset, resolution change, a "
                                                "node restart without a restorable checkpoint): sinks start a new "
                                                "segment then"),
            FieldSpec("capture_ns", _INT, False, "capture_ns of the frame (sender clock)"),
            FieldSpec("publish_ns", _INT, False, "wall-clock time (node clock, ns) the result was published"),
        ),
        payloads=(
            PayloadSpec("T_world_cam", ("<f8",), ("raw",), (4, 4),
                        "camera-to-world pose (maps camera points into the world frame), OpenCV camera axes"),
            PayloadSpec("K", ("<f8",), ("raw",), (3, 3), "intrinsics of the result grid, pixels, row-major"),
            PayloadSpec("points_world", _F16_32, ("raw",), ("H", "W", 3), "point map in the world frame (x,y,z)"),
            PayloadSpec("confidence", _F16_32, ("raw",), ("H", "W"), "per-pixel confidence, higher is better"),
            PayloadSpec("depth", _F16_32, ("raw",), ("H", "W"), "depth along the optical axis (metres if metric)"),
            PayloadSpec("image", _IMAGE_DTYPES, ("raw", "jpeg"), ("H", "W", 3), "RGB colours of the result grid"),
            PayloadSpec("T_map_odom", ("<f8",), ("raw",), (4, 4),
                        "with loop closure: the newest map <- odom correction when the result left the backend, "
                        "a Sim(3) matrix [[s R, t], [0, 1]] (ROS publishes map -> odom -> camera from it)"),
        ),
    ),
    CREDIT: KindSpec(
        CREDIT,
        "flow control, reconstruction node -> camera: acknowledges processed frames and grants the window",
        fields=(
            FieldSpec("window", _INT, True, "frames the camera may have in flight (sent, not yet acknowledged)"),
            FieldSpec("acked", (list,), True, "seqs of this stream/epoch whose results were published"),
            FieldSpec("dropped", (list,), False, "seqs of a live stream the node dropped unprocessed (a newer frame "
                                                 "replaced them: latest wins)"),
            FieldSpec("durable", _INT, False, "every processed frame of this epoch up to this seq is in the node's "
                                              "last checkpoint (-1: none); frames after it are worth keeping for "
                                              "a re-send after a node restart"),
            FieldSpec("epoch", _INT, False, "epoch the acks refer to"),
            FieldSpec("node", _INT, True, "random id of the reconstruction node process (changes on restart)"),
            FieldSpec("max_message_bytes", _INT, False, "largest message the node accepts; a larger one makes "
                                                        "libzmq drop the connection, so a camera checks first"),
        ),
    ),
    RESET: KindSpec(
        RESET,
        "asks the reconstruction node to reset the session of stream_id (camera -> node, or node -> subscribers "
        "to announce that a session restarted)",
        fields=(FieldSpec("reason", _STR, False, "why: 'request', 'resolution', 'restart' (no checkpoint could be "
                                                 "restored)"),
                FieldSpec("map_epoch", _INT, False, "node -> subscribers: the world-frame id of the new segment"),),
    ),
    HEARTBEAT: KindSpec(
        HEARTBEAT,
        "liveness, sent every `interval_s` by every node on each of its sockets",
        fields=(
            FieldSpec("node", _INT, True, "random id of the sending process"),
            FieldSpec("interval_s", (float, int), False, "seconds until the next heartbeat"),
            FieldSpec("role", _STR, False, "'camera', 'recon' or 'viewer'"),
            FieldSpec("bye", (bool,), False, "true on a node's last heartbeat: all its results were published"),
            FieldSpec("live", (bool,), False, "camera: true for a live source (the node grants it a window of 1)"),
            FieldSpec("results", _INT, False, "with bye: results the node published in all (a subscriber that got "
                                              "fewer lost some in transport)"),
            FieldSpec("lost", _INT, False, "with bye: accepted frames whose results the node gave up (a forced "
                                           "stop)"),
        ),
    ),
    REFUSE: KindSpec(
        REFUSE,
        "reconstruction node -> camera: the node will not take these frames (or this stream); the camera says so "
        "and, when retry_s is 0 and no seqs are listed, stops with an error",
        fields=(
            FieldSpec("reason", _STR, True, "stable label: 'no_slot', 'quota', 'not_owner', 'busy' (memory budget), "
                                            "'stopping', or the rejection label of a malformed frame"),
            FieldSpec("detail", _STR, True, "human-readable explanation naming the limit involved"),
            FieldSpec("seqs", (list,), True, "refused seqs of this stream/epoch; empty: the whole stream"),
            FieldSpec("retry_s", (float, int), True, "seconds after which sending again may succeed; 0: never "
                                                     "(the listed frames, or the stream when none are listed)"),
            FieldSpec("epoch", _INT, False, "epoch the seqs refer to"),
            FieldSpec("node", _INT, True, "random id of the reconstruction node process"),
        ),
    ),
}


DEFAULT_MAX_PIXELS = 3840 * 2160
"""Largest image (width x height) a node decodes by default: 4K UHD. Larger frames need `--max-pixels`."""


@dataclass(frozen=True)
class Limits:
    """Upper bounds checked before anything is allocated from a header.

    The defaults admit 4K UHD RGB-D frames (float32 depth); `for_pixels` scales the byte limits to another
    image size. `max_message_bytes` is also what the sockets get as zmq.MAXMSGSIZE, so an oversized frame is
    refused by libzmq before Python sees it (which is why the node advertises it to cameras, who check first).
    `max_pixels` bounds every image-shaped payload (H x W), so a compressed image that honestly declares
    8192x8192 is refused before it is decompressed.
    """

    max_header_bytes: int = 16 * 1024
    max_payloads: int = 8
    max_dim: int = 8192
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_payload_bytes: int = DEFAULT_MAX_PIXELS * 4
    max_message_bytes: int = DEFAULT_MAX_PIXELS * 7 + 1024 * 1024
    max_stream_id: int = 128
    max_list: int = 1024

    @classmethod
    def for_pixels(cls, max_pixels: int, **changes: Any) -> Limits:
        """Limits for images of up to `max_pixels` (RGB uint8 plus float32 depth in one message)."""
        if max_pixels < 1:
            raise ConfigError(f"max_pixels must be >= 1, got {max_pixels}")
        sized = {"max_pixels": max_pixels, "max_payload_bytes": max_pixels * 4,
                 "max_message_bytes": max_pixels * 7 + 1024 * 1024}
        return cls(**{**sized, **changes})


DEFAULT_LIMITS = Limits()


@dataclass
class Message:
    """A decoded, validated message: the header plus the payloads by name (arrays, zero-copy where raw)."""

    topic: bytes
    header: dict[str, Any]
    payloads: dict[str, np.ndarray] = field(default_factory=dict)
    compressed: dict[str, bytes] = field(default_factory=dict)
    """Compressed payloads whose image header was checked but whose pixels are not decoded yet (`decode(...,
    images=False)`); `decode_images` decodes them."""

    @property
    def kind(self) -> str:
        return str(self.header["kind"])

    @property
    def stream_id(self) -> str:
        return str(self.header["stream_id"])

    @property
    def seq(self) -> int:
        return int(self.header["seq"])


def _err(label: str, message: str) -> ProtocolError:
    """A ProtocolError tagged with a stable fault label (see `fault_kind`)."""
    e = ProtocolError(message)
    e.label = label  # type: ignore[attr-defined]
    return e


# ----------------------------------------------------------------------------------------------- encoding


def _le(arr: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian view or copy of `arr` (DESIGN.md §3)."""
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    return np.ascontiguousarray(arr, dtype=dt)


_RAW_DESCS: dict[tuple[str, str, tuple[int, ...]], dict[str, Any]] = {}


def _raw(name: str, arr: np.ndarray) -> tuple[dict[str, Any], Any]:
    a = arr if arr.flags.c_contiguous and arr.dtype.byteorder != ">" else _le(arr)
    dtype = a.dtype.str
    key = (name, dtype, a.shape)
    desc = _RAW_DESCS.get(key)
    if desc is None:
        # One descriptor per (name, dtype, shape), shared by every message with it: only ever read (packed).
        desc = {"name": name, "encoding": "raw", "dtype": dtype, "shape": list(a.shape), "nbytes": a.nbytes}
        if len(_RAW_DESCS) < 1024:
            _RAW_DESCS[key] = desc
    return desc, a.data if desc["nbytes"] else b""


def _compressed(name: str, arr: np.ndarray, encoding: str, quality: int) -> tuple[dict[str, Any], bytes]:
    import cv2

    if arr.ndim == 3:
        ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, quality] if encoding == "jpeg" else [])
    else:
        ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise _err("encode", f"cannot encode payload {name!r} as {encoding}")
    data = buf.tobytes()
    a = _le(arr)
    desc = {"name": name, "encoding": encoding, "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": len(data)}
    return desc, data


_packers = threading.local()


def _packb(obj: Any) -> bytes:
    """msgpack.packb(obj, use_bin_type=True) with one Packer per thread (packb builds a Packer per call: a third
    of its cost for a header; a Packer is not thread-safe, hence one per thread)."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    try:
        return packer.pack(obj)
    except Exception:
        _packers.packer = None  # a failed pack may leave its buffer half-written: the next call starts afresh
        raise


def _header(kind: str, stream_id: str, seq: int, t_ns: int, **extra: Any) -> dict[str, Any]:
    h: dict[str, Any] = {"v": VERSION, "kind": kind, "stream_id": stream_id, "seq": int(seq), "t_ns": int(t_ns)}
    for k, v in extra.items():
        if v is not None:
            h[k] = v
    return h


def _pack(topic: bytes, header: dict[str, Any], parts: list[tuple[dict[str, Any], Any]]) -> list[Any]:
    header["payloads"] = [d for d, _ in parts]
    return [topic, _packb(header), *[p for _, p in parts]]


def encode_frame(frame: Frame, *, encoding: str = "raw", quality: int = 90, depth_encoding: str = "f4",
                 depth_scale: float = 0.001, epoch: int | None = None, live: bool | None = None,
                 frame_id: str | None = None, capture_ns: int | None = None) -> list[Any]:
    """Multipart parts for `frame`; raw payloads are zero-copy views, ready for send_multipart(copy=False).

    Args:
        encoding: image encoding, 'raw', 'jpeg' or 'png'.
        depth_encoding: 'f4' (float32 metres), 'u2' (uint16 times `depth_scale`) or 'png' (uint16 as PNG).
    """
    if encoding not in ("raw", "jpeg", "png"):
        raise _err("encode", f"unknown image encoding {encoding!r}; use raw, jpeg or png")
    parts = [_raw("image", frame.image) if encoding == "raw" else _compressed("image", frame.image, encoding, quality)]
    scale = None
    if frame.depth is not None:
        if depth_encoding == "f4":
            parts.append(_raw("depth", frame.depth.astype(np.float32, copy=False)))
        elif depth_encoding in ("u2", "png"):
            scale = float(depth_scale)
            d = np.clip(np.nan_to_num(frame.depth / scale, nan=0.0, posinf=0.0), 0, 65535).round().astype(np.uint16)
            parts.append(_raw("depth", d) if depth_encoding == "u2" else _compressed("depth", d, "png", 0))
        else:
            raise _err("encode", f"unknown depth encoding {depth_encoding!r}; use f4, u2 or png")
    if frame.K is not None:
        parts.append(_raw("K", np.asarray(frame.K, dtype=np.float64)))
    header = _header(FRAME, frame.stream_id, frame.seq, frame.t_ns, epoch=epoch, live=live, depth_scale=scale,
                     frame_id=frame_id, capture_ns=capture_ns)
    return _pack(TOPIC_FRAME + frame.stream_id.encode(), header, parts)


def encode_result(result: FrameResult, *, points_dtype: str = "f4", stride: int = 1, with_image: bool = True,
                  epoch: int | None = None, session: int | None = None, map_epoch: int | None = None,
                  capture_ns: int | None = None, publish_ns: int | None = None) -> list[Any]:
    """Multipart parts for `result` (see KINDS[RESULT]); `points_dtype` 'f2' halves the point-map bytes."""
    if stride < 1:
        raise _err("encode", f"stride must be >= 1, got {stride}")
    dt = np.float16 if points_dtype == "f2" else np.float32
    parts = [_raw("T_world_cam", result.T_world_cam.astype(np.float64, copy=False)),
             _raw("K", result.K.astype(np.float64, copy=False))]
    for name, arr in (("points_world", result.points_world), ("confidence", result.confidence),
                      ("depth", result.depth)):
        if arr is not None:
            parts.append(_raw(name, np.asarray(arr)[::stride, ::stride].astype(dt, copy=False)))
    if with_image and result.image is not None:
        parts.append(_raw("image", np.asarray(result.image, dtype=np.uint8)[::stride, ::stride]))
    if result.T_map_odom is not None:
        parts.append(_raw("T_map_odom", np.asarray(result.T_map_odom, dtype=np.float64)))
    header = _header(RESULT, result.stream_id, result.seq, result.t_ns, metric=bool(result.metric),
                     is_update=bool(result.is_update), tracked=None if result.tracked else False,
                     stride=stride if stride != 1 else None, epoch=epoch,
                     session=session, map_epoch=map_epoch, capture_ns=capture_ns, publish_ns=publish_ns)
    return _pack(TOPIC_RESULT + result.stream_id.encode(), header, parts)


def encode_control(kind: str, stream_id: str = "", *, seq: int = -1, t_ns: int = 0, **fields: Any) -> list[Any]:
    """Multipart parts for a control message (credit, reset, heartbeat) with its kind-specific fields."""
    if kind not in _CONTROL_KINDS:
        raise _err("encode", f"{kind!r} is not a control kind")
    h = _header(kind, stream_id, seq, t_ns, **fields)
    h["payloads"] = []
    return [TOPIC_CONTROL, _packb(h)]


_CONTROL_KINDS = frozenset(k for k, spec in KINDS.items() if not spec.payloads)


# ----------------------------------------------------------------------------------------------- decoding


def _buffer(part: Any) -> memoryview:
    """Bytes of one received part (zmq.Frame, bytes or memoryview) without copying."""
    buf = getattr(part, "buffer", part)
    try:
        return memoryview(buf).cast("B")
    except TypeError as e:
        raise _err("bad_multipart", f"payload frame of type {type(part).__name__} is not a buffer") from e


def _compile(specs: tuple[FieldSpec, ...]) -> tuple[tuple[str, frozenset[type], bool, str], ...]:
    """Field checks as (name, exact msgpack types, required, expected-type text): msgpack yields exact builtin types,
    so one set lookup per field checks it (and keeps bool apart from int: `seq: true` is rejected)."""
    return tuple((f.name, frozenset(f.types), f.required, "/".join(t.__name__ for t in f.types)) for f in specs)


def _check_fields(where: str, obj: dict[str, Any], checks: tuple[tuple[str, frozenset[type], bool, str], ...]) -> None:
    for name, types, required, expected in checks:
        value = obj.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise _err("missing_field", f"{where}: missing field {name!r}")
            continue
        if type(value) not in types:
            raise _err("bad_field_type", f"{where}: field {name!r} has type {type(value).__name__}, "
                                         f"expected {expected}")


_MISSING = object()
_COMMON_CHECKS = _compile(COMMON_FIELDS)
_PAYLOAD_CHECKS = _compile(PAYLOAD_FIELDS)
_KIND_CHECKS = {k: _compile(spec.fields) for k, spec in KINDS.items()}
_KIND_PAYLOADS = {k: {p.name: p for p in spec.payloads} for k, spec in KINDS.items()}
_KIND_FAMILIES = frozenset(k.rsplit("/v", 1)[0] for k in KINDS)
_ITEMSIZE: dict[str, int] = {}


def _itemsize(dtype: str) -> int:
    size = _ITEMSIZE.get(dtype)
    if size is None:
        size = _ITEMSIZE[dtype] = np.dtype(dtype).itemsize
    return size


def decode_header(raw: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Parse and validate a header frame (version, kind, common and kind fields, payload descriptors).

    A stream sends the same header shape message after message (same fields, types, stream id and payload
    descriptors; only seq, times and ack lists change). The shape checks run once per shape (`_SHAPES`); the
    checks of the values that change run on every message.

    Raises:
        IncompatibleVersionError: `v` is not a major version this build reads.
        ProtocolError: anything else malformed.
    """
    buf = _buffer(raw)
    if len(buf) > limits.max_header_bytes:
        raise _err("header_too_large", f"header of {len(buf)} bytes exceeds the limit of {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(buf, raw=False, strict_map_key=True, use_list=True,
                                 max_str_len=limits.max_header_bytes,
                                 max_bin_len=0, max_ext_len=0, max_array_len=limits.max_list,
                                 max_map_len=64)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise _err("bad_header", f"header is not valid msgpack: {type(e).__name__}: {e}") from e
    if type(header) is not dict:
        raise _err("bad_header", f"header is a {type(header).__name__}, expected a map")
    v = header.get("v")
    if isinstance(v, int) and not isinstance(v, bool) and v != VERSION:
        raise IncompatibleVersionError(f"message has protocol major version {v}; this node reads version {VERSION} "
                                       f"(upgrade the older side)")
    key = _shape_key(header)
    if key is None or _SHAPES.get(key) is not limits:
        _check_shape(header, limits)
        if key is not None:
            if len(_SHAPES) >= _MAX_SHAPES:
                _SHAPES.clear()
            _SHAPES[key] = limits
    _check_values(header, limits)
    return header


_SHAPES: dict[tuple[Any, ...], Limits] = {}
"""Header shapes (`_shape_key`) that passed `_check_shape`, with the limits they passed under."""
_MAX_SHAPES = 1024


def _shape_key(header: dict[str, Any]) -> tuple[Any, ...] | None:
    """What `_check_shape` depends on, exactly: field names in order, the exact type of every value, the kind, the
    stream id and the payload descriptors (re-packed: msgpack keeps 3, 3.0 and true apart, `==` would not). None
    when the header is too odd to key (it then takes the full checks, which reject it)."""
    kind, sid, descs = header.get("kind"), header.get("stream_id"), header.get("payloads")
    if type(kind) is not str or type(sid) is not str or type(descs) is not list:
        return None
    try:
        packed = _packb(descs)
    except Exception:  # noqa: BLE001 - not re-packable: no key, the full checks decide
        return None
    return tuple(header), tuple(map(type, header.values())), kind, sid, packed


def _check_shape(header: dict[str, Any], limits: Limits) -> None:
    """The checks that depend only on `_shape_key`: fields present with their types, kind, stream id, and every
    payload descriptor against its spec and the limits."""
    _check_fields("header", header, _COMMON_CHECKS)
    kind = header["kind"]
    if kind not in KINDS:
        major = kind.rsplit("/v", 1)
        if len(major) == 2 and major[0] in _KIND_FAMILIES:
            raise IncompatibleVersionError(f"message kind {kind!r} has a version this node does not read")
        raise _err("unknown_kind", f"unknown message kind {kind[:64]!r}")
    spec = KINDS[kind]
    _check_fields(kind, header, _KIND_CHECKS[kind])
    sid = header["stream_id"]
    if len(sid) > limits.max_stream_id or not sid.isprintable():
        raise _err("bad_stream_id", f"stream_id must be at most {limits.max_stream_id} printable characters")
    if kind in (FRAME, RESULT) and not sid:
        raise _err("bad_stream_id", f"{kind}: empty stream_id")
    descs = header["payloads"]
    if len(descs) > min(limits.max_payloads, len(spec.payloads)):
        raise _err("bad_payload_list", f"{kind}: {len(descs)} payloads declared, at most {len(spec.payloads)} allowed")
    allowed = _KIND_PAYLOADS[kind]
    seen: set[str] = set()
    for i, d in enumerate(descs):
        if type(d) is not dict:
            raise _err("bad_payload_list", f"{kind}: payload descriptor {i} is not a map")
        _check_fields(f"{kind} payload {i}", d, _PAYLOAD_CHECKS)
        p = allowed.get(d["name"])
        if p is None or d["name"] in seen:
            raise _err("bad_payload_list", f"{kind}: unexpected or repeated payload {d['name'][:32]!r}")
        seen.add(d["name"])
        _check_payload(kind, p, d, limits)
    if kind == FRAME and "image" not in seen:
        raise _err("bad_payload_list", f"{kind}: no image payload")
    if kind == RESULT and not {"T_world_cam", "K"} <= seen:
        raise _err("bad_payload_list", f"{kind}: T_world_cam and K are required")


def _check_values(header: dict[str, Any], limits: Limits) -> None:
    """The checks of values that change from message to message (a header whose shape passed `_check_shape`)."""
    kind = header["kind"]
    seq = header["seq"]
    if not (-1 <= seq < 2**63) or not (0 <= header["t_ns"] < 2**63):
        raise _err("bad_field_value", "seq or t_ns out of range")
    if seq < 0 and kind in (FRAME, RESULT):
        raise _err("bad_field_value", f"{kind}: seq must be >= 0 (-1 is reserved for control messages)")
    for name in ("capture_ns", "publish_ns"):
        if name in header and not 0 <= header[name] < 2**63:
            raise _err("bad_field_value", f"{kind}: {name} out of range")
    if kind == FRAME:
        if "depth_scale" in header:
            s = header["depth_scale"]
            if not (isinstance(s, int | float) and 0 < s <= 100):
                raise _err("bad_field_value", f"{kind}: depth_scale must be in (0, 100] metres per unit")
    elif kind == RESULT:
        if "stride" in header and not 1 <= header["stride"] <= limits.max_dim:
            raise _err("bad_field_value", f"{kind}: stride out of range")
    elif kind == CREDIT:
        if not 0 <= header["window"] <= 1 << 16:
            raise _err("bad_field_value", f"{kind}: window out of range")
        for name in ("acked", "dropped"):
            if name in header and not _seq_list(header[name]):
                raise _err("bad_field_value", f"{kind}: {name} must be a list of non-negative ints")
    elif kind == REFUSE:
        if not _seq_list(header["seqs"]):
            raise _err("bad_field_value", f"{kind}: seqs must be a list of non-negative ints")
        if not (math.isfinite(header["retry_s"]) and 0 <= header["retry_s"] <= 3600):
            raise _err("bad_field_value", f"{kind}: retry_s must be in [0, 3600]")


def _seq_list(values: list[Any]) -> bool:
    """Every element an int (not a bool) in [0, 2**63) (checked on every credit: a loop, then min/max in C)."""
    for v in values:
        if type(v) is not int:
            return False
    return not values or (min(values) >= 0 and max(values) < 2**63)


def peek_frame(raw: Any, limits: Limits = DEFAULT_LIMITS) -> tuple[str, int, int | None] | None:
    """(stream_id, seq, epoch) of a frame header that may break other rules, or None when it does not even say
    that much: lets a receiver tell the sender which of its frames was refused."""
    try:
        buf = _buffer(raw)
        if len(buf) > limits.max_header_bytes:
            return None
        h = msgpack.unpackb(buf, raw=False, max_str_len=limits.max_header_bytes, max_bin_len=0, max_ext_len=0,
                            max_array_len=limits.max_list, max_map_len=64)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not a frame we can name
        return None
    if not isinstance(h, dict) or h.get("kind") != FRAME:
        return None
    sid, seq, epoch = h.get("stream_id"), h.get("seq"), h.get("epoch")
    if not (isinstance(sid, str) and 0 < len(sid) <= limits.max_stream_id and sid.isprintable()):
        return None
    if not (isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63):
        return None
    ok_epoch = isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch < 2**63
    return sid, seq, epoch if ok_epoch else None


def _check_payload(kind: str, p: PayloadSpec, d: dict[str, Any], limits: Limits) -> None:
    """Check one descriptor against its spec and the limits; no allocation happens before this passes."""
    where = f"{kind} payload {p.name!r}"
    if d["encoding"] not in p.encodings:
        raise _err("bad_encoding", f"{where}: encoding {d['encoding'][:16]!r} not in {p.encodings}")
    if d["dtype"] not in p.dtypes:
        raise _err("bad_dtype", f"{where}: dtype {d['dtype'][:16]!r} not in {p.dtypes}")
    shape = d["shape"]
    if len(shape) != len(p.shape) or not all(type(s) is int for s in shape):
        raise _err("bad_shape", f"{where}: shape must have {len(p.shape)} integer dims like {p.shape}")
    for s, want in zip(shape, p.shape, strict=True):
        if type(want) is int and s != want:
            raise _err("bad_shape", f"{where}: shape {shape} does not match {p.shape}")
        if not 1 <= s <= limits.max_dim:
            raise _err("bad_shape", f"{where}: dimension {s} outside 1..{limits.max_dim}")
    if "H" in p.shape and shape[0] * shape[1] > limits.max_pixels:
        raise _err("too_many_pixels", f"{where}: {shape[1]}x{shape[0]} = {shape[0] * shape[1]} pixels exceeds the "
                                      f"limit of {limits.max_pixels} (--max-pixels)")
    nbytes = math.prod(shape) * _itemsize(d["dtype"])
    if nbytes > limits.max_payload_bytes:
        raise _err("too_large", f"{where}: {nbytes} bytes declared, limit {limits.max_payload_bytes}")
    if d["encoding"] == "raw" and d["nbytes"] != nbytes:
        raise _err("size_mismatch", f"{where}: nbytes {d['nbytes']} does not match shape {shape} x {d['dtype']}")
    if not 0 <= d["nbytes"] <= limits.max_payload_bytes:
        raise _err("too_large", f"{where}: nbytes {d['nbytes']} out of range")


def _check_compressed(where: str, buf: memoryview, d: dict[str, Any]) -> bytes:
    """The JPEG/PNG bytes after checking, from the file's own header only (no pixel buffer), that it is the
    declared format and size (the declared size was checked against the limits); returns the bytes."""
    from PIL import Image, UnidentifiedImageError

    data = bytes(buf)  # bounded by nbytes, itself limit-checked
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only: no pixel buffer yet
            size, fmt = im.size, im.format
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _err("bad_image", f"{where}: not a readable {d['encoding']} image: {e}") from e
    if fmt != d["encoding"].upper():
        raise _err("bad_image", f"{where}: declared {d['encoding']}, got {fmt}")
    h, w = d["shape"][:2]
    if size != (w, h):
        raise _err("bad_image", f"{where}: image is {size[0]}x{size[1]}, header declares {w}x{h}")
    return data


def _decode_image(where: str, data: bytes, d: dict[str, Any]) -> np.ndarray:
    """Pixels of checked JPEG/PNG bytes (`_check_compressed`), as the declared dtype and shape."""
    import cv2

    flag = cv2.IMREAD_COLOR if len(d["shape"]) == 3 else cv2.IMREAD_UNCHANGED
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        raise _err("bad_image", f"{where}: {d['encoding']} data is corrupt")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place: no second full-size buffer
    if img.shape != tuple(d["shape"]) or img.dtype != np.dtype(d["dtype"]):
        raise _err("bad_image", f"{where}: decoded {img.dtype} {img.shape}, declared {d['dtype']} {d['shape']}")
    return img


def decode(parts: list[Any], limits: Limits = DEFAULT_LIMITS, *, images: bool = True) -> Message:
    """Validate and decode a received multipart (topic, header, payloads...); raw payloads stay zero-copy.

    With `images=False` compressed payloads are only checked (format and size from their own header) and kept in
    `Message.compressed`, so a receiver can validate on one thread and decompress on another (`decode_images`).
    """
    if not isinstance(parts, list | tuple) or len(parts) < 2:
        n = len(parts) if isinstance(parts, list | tuple) else 0
        raise _err("bad_multipart", f"expected topic, header and payload frames, got {n} frames")
    if len(parts) > 2 + limits.max_payloads:
        raise _err("bad_multipart", f"{len(parts)} frames exceed the limit of {2 + limits.max_payloads}")
    topic = bytes(_buffer(parts[0])[:256])
    header = decode_header(parts[1], limits)
    descs = header["payloads"]
    if len(parts) - 2 != len(descs):
        raise _err("bad_multipart",
                   f"{header['kind']}: header declares {len(descs)} payloads, message has {len(parts) - 2}")
    msg = Message(topic, header)
    for d, part in zip(descs, parts[2:], strict=True):
        buf = _buffer(part)
        if len(buf) != d["nbytes"]:
            raise _err("size_mismatch", f"{header['kind']} payload {d['name']!r}: frame has {len(buf)} bytes, header "
                                        f"declares {d['nbytes']}")
        if d["encoding"] == "raw":
            arr = np.frombuffer(buf, dtype=d["dtype"]).reshape(d["shape"])
            if not arr.flags.aligned:
                # ZeroMQ gives no alignment guarantee; unaligned float arrays are slow and some libraries
                # (open3d) refuse their buffer format, so those few are copied (bytes, already size-checked).
                arr = arr.copy()
            msg.payloads[d["name"]] = arr
        else:
            where = f"{header['kind']} payload {d['name']!r}"
            data = _check_compressed(where, buf, d)
            if images:
                msg.payloads[d["name"]] = _decode_image(where, data, d)
            else:
                msg.compressed[d["name"]] = data
    return msg


def decode_images(msg: Message) -> Message:
    """Decompress the payloads `decode(..., images=False)` left in `msg.compressed` (in place; returns msg)."""
    for d in msg.header["payloads"]:
        data = msg.compressed.pop(d["name"], None)
        if data is not None:
            msg.payloads[d["name"]] = _decode_image(f"{msg.header['kind']} payload {d['name']!r}", data, d)
    return msg


def decoded_bytes(header: dict[str, Any]) -> int:
    """Bytes the payloads of a validated header occupy once decoded (raw payloads: as received)."""
    return sum(math.prod(d["shape"]) * _itemsize(d["dtype"]) for d in header["payloads"])


def message_bytes(parts: list[Any]) -> int:
    """Bytes of a multipart as it goes on the wire (what zmq.MAXMSGSIZE limits)."""
    return sum(p.nbytes if type(p) is memoryview else len(_buffer(p)) for p in parts)


def _finite(where: str, arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        raise _err("bad_value", f"{where}: contains NaN or infinity")


def check_intrinsics(K: np.ndarray, width: int, height: int) -> None:
    """Refuse a K that is not a finite pinhole with positive focal lengths (the bounds of KINDS[FRAME]'s K)."""
    where = f"{FRAME} K"
    _finite(where, K)
    size = float(max(width, height))
    fx, fy, skew, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 1]), float(K[0, 2]), float(K[1, 2])
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise _err("bad_intrinsics", f"{where}: not a pinhole matrix (the last row must be [0, 0, 1] and K[1][0] 0), "
                                     f"got {np.asarray(K).tolist()}")
    if not (0 < fx <= 1000 * size and 0 < fy <= 1000 * size):
        raise _err("bad_intrinsics", f"{where}: focal lengths fx={fx:g}, fy={fy:g} must be in (0, {1000 * size:g}] "
                                     f"pixels for a {width}x{height} image")
    if abs(skew) > fx:
        raise _err("bad_intrinsics", f"{where}: skew {skew:g} larger than fx {fx:g}")
    if abs(cx - width / 2) > 10 * size or abs(cy - height / 2) > 10 * size:
        raise _err("bad_intrinsics", f"{where}: principal point ({cx:g}, {cy:g}) is far outside the "
                                     f"{width}x{height} image")


def valid_depth(depth: np.ndarray) -> np.ndarray:
    """Float depth with NaN, infinite and negative values set to 0 (invalid); the same array when all are valid."""
    good = np.isfinite(depth) & (depth >= 0)
    if good.all():
        return depth
    return np.where(good, depth, np.float32(0)).astype(depth.dtype, copy=False)


def to_frame(msg: Message) -> Frame:
    """The recon.types.Frame in a decoded frame message (depth converted to float32 metres)."""
    if msg.kind != FRAME:
        raise _err("wrong_kind", f"expected {FRAME}, got {msg.kind}")
    if msg.compressed:
        decode_images(msg)
    h, p = msg.header, msg.payloads
    image = p["image"]
    depth = p.get("depth")
    if depth is not None:
        if depth.shape != image.shape[:2]:
            raise _err("bad_shape", f"{FRAME}: depth {depth.shape} does not match image {image.shape[:2]}")
        if depth.dtype == np.uint16:
            depth = depth.astype(np.float32) * np.float32(h.get("depth_scale", 0.001))
        else:
            depth = valid_depth(depth)
    K = p.get("K")
    if K is not None:
        check_intrinsics(K, image.shape[1], image.shape[0])
    meta = {"epoch": int(h.get("epoch", 0)), "live": bool(h.get("live", False))}
    if "frame_id" in h:
        meta["frame_id"] = h["frame_id"]
    try:
        return Frame(h["stream_id"], h["seq"], h["t_ns"], image, K=K, depth=depth, meta=meta)
    except ConfigError as e:
        raise _err("bad_payload", f"{FRAME}: {e}") from e


def to_result(msg: Message) -> FrameResult:
    """The recon.types.FrameResult in a decoded result message (per-pixel arrays as float32)."""
    if msg.kind != RESULT:
        raise _err("wrong_kind", f"expected {RESULT}, got {msg.kind}")
    h, p = msg.header, msg.payloads
    _finite(f"{RESULT} T_world_cam", p["T_world_cam"])
    if "T_map_odom" in p:
        _finite(f"{RESULT} T_map_odom", p["T_map_odom"])

    def f32(name: str) -> np.ndarray | None:
        a = p.get(name)
        return None if a is None else a.astype(np.float32, copy=False)

    try:
        return FrameResult(h["stream_id"], h["seq"], h["t_ns"], p["T_world_cam"], p["K"], depth=f32("depth"),
                           confidence=f32("confidence"), points_world=f32("points_world"), metric=h["metric"],
                           image=p.get("image"), is_update=bool(h.get("is_update", False)),
                           tracked=bool(h.get("tracked", True)), T_map_odom=p.get("T_map_odom"))
    except ConfigError as e:
        raise _err("bad_payload", f"{RESULT}: {e}") from e


def fault_kind(exc: Exception) -> str:
    """Short stable label of a rejected message: the WarnOnce kind and the status counter key."""
    if isinstance(exc, IncompatibleVersionError):
        return "incompatible_version"
    return str(getattr(exc, "label", "malformed"))


def schema_markdown() -> str:
    """The schema tables as Markdown; docs/protocol.md embeds this text (a test keeps them equal)."""

    def types(spec: FieldSpec) -> str:
        return "/".join(t.__name__ for t in spec.types)

    def cell(text: str) -> str:
        return text.replace("|", "\\|")  # '|u1' would end a Markdown table cell

    lines = ["### Common header fields", "", "| field | type | required | meaning |", "|---|---|---|---|"]
    lines += [f"| `{f.name}` | {types(f)} | {'yes' if f.required else 'no'} | {cell(f.doc)} |" for f in COMMON_FIELDS]
    lines += ["", "### Payload descriptors (`payloads[i]`)", "", "| field | type | meaning |", "|---|---|---|"]
    lines += [f"| `{f.name}` | {types(f)} | {cell(f.doc)} |" for f in PAYLOAD_FIELDS]
    for kind in KINDS.values():
        lines += ["", f"### `{kind.kind}`", "", kind.doc[0].upper() + kind.doc[1:] + "."]
        if kind.fields:
            lines += ["", "| field | type | required | meaning |", "|---|---|---|---|"]
            lines += [f"| `{f.name}` | {types(f)} | {'yes' if f.required else 'no'} | {cell(f.doc)} |"
                      for f in kind.fields]
        if kind.payloads:
            lines += ["", "| payload | dtypes | encodings | shape | meaning |", "|---|---|---|---|---|"]
            lines += [f"| `{p.name}` | {cell(', '.join(f'`{d}`' for d in p.dtypes))} | {', '.join(p.encodings)} | "
                      f"{' x '.join(str(d) for d in p.shape)} | {cell(p.doc)} |" for p in kind.payloads]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(schema_markdown())


def decode_small_request(raw: list[bytes]) -> dict[str, Any]:
    """The command map of a control or front request (one small msgpack map with a string `cmd`).

    Raises ValueError on anything else; the caller counts and answers it (REQ/REP must always reply)."""
    if len(raw) != 1 or len(raw[0]) > 4096:
        raise ValueError("expected one small msgpack map")
    cmd = msgpack.unpackb(raw[0], raw=False, max_str_len=1024, max_bin_len=0, max_array_len=16, max_map_len=16)
    if not isinstance(cmd, dict) or not isinstance(cmd.get("cmd"), str):
        raise ValueError("missing 'cmd'")
    return cmd
