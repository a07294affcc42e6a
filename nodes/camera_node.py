"""The camera node: reads a source and streams frames to a reconstruction node (DEALER -> ROUTER).

Flow control is credit based for every source: the reconstruction node grants a window (its
per-stream queue size) and acknowledges each frame once its results are published.

- Recorded sources keep every sent, unacknowledged frame, plus the acknowledged ones the node has
  not checkpointed yet (after the `durable` seq of its credits; at most `keep_acked`). When the
  reconstruction node restarts (its id changes in the credit messages) they are sent again, in seq
  order, paced by the new window, so a restored session catches up to where it was; an overdue ack
  also triggers a re-send. The node dedupes by (stream_id, epoch, seq) and so do subscribers, so
  every seq reaches the output once.
- Live sources have a window of 1: the newest captured frame is sent when the previous one has been
  processed, so at most one frame ever waits anywhere (the capture buffer). Frames overwritten before
  sending are dropped and counted. After a restart nothing is re-sent: a live frame is worth nothing
  late.

Refusals are visible: a frame larger than the node's `max_message_bytes` (which it advertises in its
credits) stops the camera with an error naming both sizes instead of being sent (libzmq would drop the
connection); a `refuse` message for the whole stream (no slot, quota, another owner) stops it with the
node's reason, unless the node says a retry may succeed; refused single frames are counted and, when
final, not re-sent.

Heartbeats go out every `heartbeat_s`; the node answers each with a credit message, which is how
a (re)started node is discovered. ZeroMQ reconnects the TCP link by itself.

With a front endpoint (`front`, a `recon serve --ray` deployment; recon.nodes.front) the camera asks it where its
stream lives before streaming, and again whenever its connection drops or the node goes silent: a stream moved to
another worker is redirected there, which the camera sees as a node restart (another node id) and re-sends what
that worker's restored session lacks.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from recon.calib.undistort import FrameUndistorter
from recon.errors import CorruptFrameError
from recon.nodes import protocol as P
from recon.nodes.sources import Source
from recon.nodes.transport import (
    Security,
    default_context,
    new_node_id,
    open_socket,
    readable,
    recv_parts,
    send_parts,
)
from recon.types import Frame
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)

LIVE_ACK_TIMEOUT_S = 30.0
_POLLIN = int(zmq.POLLIN)


@dataclass
class CameraNodeConfig:
    """Options of the camera node.

    Attributes:
        connect: ROUTER endpoint of the reconstruction node.
        stream_id: name of this stream (one session per stream on the node).
        encoding: image encoding on the wire: raw, jpeg or png.
        depth_encoding: depth on the wire: f4 (float32 metres, lossless), u2 (uint16 millimetres) or png (the same,
            compressed).
        fps: maximum send rate (None: as fast as credits allow).
        heartbeat_s: heartbeat period; the node is considered gone after `timeout_s` of silence.
        resend_s: re-send a recorded frame whose ack is this overdue.
        max_frames: stop after this many frames were sent (None: until the source ends).
        stride: recorded sources: send every `stride`-th frame only.
        keep_acked: recorded sources: acknowledged frames kept to re-send after a node restart (those after the
            node's last checkpoint, at most this many).
        on_send: called with each frame before it is encoded (in-process runs keep `Frame.meta` aside with it).
        record_latency: keep each frame's send-to-acknowledgement time in `CameraStats.latency_ms` (benchmarks).
        undistort: remap frames of a camera whose CameraInfo has lens distortion to its pinhole camera before
            sending (the wire then carries pinhole images and K, which is what every backend assumes).
        front: the service's front endpoint (recon.nodes.front): `connect` is asked there, and asked again when
            the node is lost.
    """

    connect: str = "tcp://127.0.0.1:5555"
    stream_id: str = "cam0"
    encoding: str = "raw"
    undistort: bool = True
    jpeg_quality: int = 90
    depth_encoding: str = "f4"
    fps: float | None = None
    heartbeat_s: float = 0.5
    timeout_s: float = 3.0
    resend_s: float = 5.0
    max_frames: int | None = None
    stride: int = 1
    keep_acked: int = 64
    on_send: Callable[[Frame], None] | None = None
    record_latency: bool = False
    security: Security = field(default_factory=Security)
    front: str | None = None


@dataclass
class CameraStats:
    """What the camera node did (also logged at the end).

    Attributes:
        captured: frames the live source captured (0 for recorded sources).
        sent / resent: frames sent for the first time / again.
        acked: frames the node processed (acknowledged), whenever the ack came.
        drops: frames the live source overwrote before they could be sent (dropped at the camera).
        dropped_at_node: live frames the node dropped unprocessed (a newer frame replaced them).
        refused: frames the node refused for good (malformed, or the stream was refused).
        reconnects: node restarts seen.
        stopped_on_error: why the stream stopped early (corrupt frame, refusal, oversize frame), else None.
    """

    captured: int = 0
    sent: int = 0
    resent: int = 0
    acked: int = 0
    drops: int = 0
    dropped_at_node: int = 0
    refused: int = 0
    reconnects: int = 0
    redirects: int = 0
    skipped_by_stride: int = 0
    stopped_on_error: str | None = None
    latency_ms: list[float] = field(default_factory=list)
    """With `CameraNodeConfig.record_latency`: send-to-acknowledgement milliseconds of each acknowledged frame."""


class CameraNode:
    """Streams one source to one reconstruction node; `run()` blocks until done or `stop()`."""

    def __init__(self, source: Source, config: CameraNodeConfig, context: zmq.Context | None = None) -> None:
        self.source = source
        self.config = config
        self.ctx = context or default_context()
        self.epoch = new_node_id()
        self.stats = CameraStats()
        self.warn = WarnOnce(logger)
        self._stop = threading.Event()
        self.node_id: int | None = None
        self.window = 0
        self._pending: collections.OrderedDict[int, list[Any]] = collections.OrderedDict()
        self._sent_at: dict[int, float] = {}  # in flight: sent, not acknowledged
        self._recent: collections.OrderedDict[int, list[Any]] = collections.OrderedDict()
        self._unacked: collections.OrderedDict[int, None] = collections.OrderedDict()  # sent, no ack counted yet
        self._durable = -1
        self.max_message_bytes: int | None = None
        self._paused_until = 0.0
        self._reconnecting = False
        self._index = -1
        self._resend_from_restart: set[int] = set()
        self._undistort = FrameUndistorter(str(self), config.undistort)

    def __str__(self) -> str:
        return f"CameraNode({self.config.stream_id}->{self.config.connect})"

    def stop(self) -> None:
        self._stop.set()

    def _encode(self, frame: Frame) -> list[Any]:
        cfg = self.config
        frame.stream_id = cfg.stream_id
        if cfg.on_send is not None:
            cfg.on_send(frame)
        info = self.source.camera_info
        self._undistort.apply(frame, info)  # --no-undistort sends frames as captured
        capture_ns = frame.t_ns if self.source.live else time.time_ns()
        return P.encode_frame(frame, encoding=cfg.encoding, quality=cfg.jpeg_quality,
                              depth_encoding=cfg.depth_encoding, epoch=self.epoch,
                              live=self.source.live, frame_id=None if info is None else info.frame_id,
                              capture_ns=capture_ns)

    def _fail(self, message: str) -> None:
        """Stop streaming because of `message` (the CLI exits non-zero with it)."""
        if self.stats.stopped_on_error is None:
            self.stats.stopped_on_error = message
            logger.error("%s: %s", self, message)
        self._stop.set()

    def _check_size(self, seq: int, parts: list[Any]) -> bool:
        limit = self.max_message_bytes
        if limit is None:
            return True
        size = P.message_bytes(parts)
        if size <= limit:
            return True
        self._pending.pop(seq, None)
        self._fail(f"frame {seq} is {size} bytes on the wire, over the reconstruction node's limit of {limit} bytes "
                   f"(raise the node's --max-message-mb / --max-pixels, or send --encoding jpeg)")
        return False

    def _send(self, sock: zmq.Socket, seq: int, parts: list[Any]) -> bool:
        if not self._check_size(seq, parts):
            return False
        try:
            send_parts(sock, parts, copy=False)
        except zmq.Again:
            return False
        self._sent_at[seq] = time.monotonic()
        self._unacked[seq] = None
        while len(self._unacked) > 4096:
            self._unacked.popitem(last=False)
        return True

    def _on_reply(self, sock: zmq.Socket, parts: list[Any]) -> None:
        try:
            msg = P.decode(parts)
        except Exception as e:
            self.warn(P.fault_kind(e), "%s: bad reply from the node: %s", self, e)
            return
        if msg.kind == P.REFUSE:
            self._on_refusal(msg.header)
            return
        if msg.kind != P.CREDIT:
            return
        h = msg.header
        node = int(h["node"])
        self._reconnecting = False
        self.window = min(int(h["window"]), 1) if self.source.live else int(h["window"])
        if "max_message_bytes" in h:
            self.max_message_bytes = int(h["max_message_bytes"])
        if h.get("epoch", self.epoch) == self.epoch:
            now = time.monotonic()
            if "durable" in h:
                self._durable = int(h["durable"])
                for seq in [s for s in self._recent if s <= self._durable]:
                    del self._recent[seq]
            for seq in h.get("dropped", ()):
                if self._unacked.pop(seq, "gone") is None:
                    self.stats.dropped_at_node += 1
                self._pending.pop(seq, None)
                self._sent_at.pop(seq, None)
            for seq in h["acked"]:
                if self._unacked.pop(seq, "gone") is None:
                    self.stats.acked += 1  # counted even when a live frame's ack comes after it expired
                parts = self._pending.pop(seq, None)
                t = self._sent_at.pop(seq, None)
                if parts is not None:
                    if self.config.record_latency and t is not None:
                        self.stats.latency_ms.append(1000 * (now - t))
                    if not self.source.live and self.config.keep_acked and seq > self._durable:
                        self._recent[seq] = parts
                        while len(self._recent) > self.config.keep_acked:
                            self._recent.popitem(last=False)
        if node != self.node_id:
            if self.node_id is not None:
                self.stats.reconnects += 1
                logger.warning("%s: reconstruction node restarted (%x -> %x); re-sending %d unacknowledged and %d "
                               "acknowledged frames it had not checkpointed", self, self.node_id, node,
                               0 if self.source.live else len(self._pending), len(self._recent))
            else:
                logger.info("%s: connected to reconstruction node %x (window %d)", self, node, self.window)
            self.node_id = node
            self._sent_at.clear()  # nothing is in flight at the new node
            self._paused_until = 0.0
            if self.source.live:
                self._pending.clear()
            else:
                # The acknowledged frames the old node had not checkpointed go again, so a restored session catches
                # up to where it was (an ack may also have left a dying node while its result did not). Subscribers
                # drop what they already have. Sent in seq order, paced by the new window (`_send_unsent`).
                merged = {**self._recent, **self._pending}
                self._pending = collections.OrderedDict(sorted(merged.items()))
                self._recent.clear()
                self._durable = -1
                self._resend_from_restart = set(self._pending)

    def _on_refusal(self, h: dict[str, Any]) -> None:
        if h.get("epoch", self.epoch) != self.epoch:
            return
        reason, detail, retry_s = str(h["reason"]), str(h["detail"]), float(h["retry_s"])
        seqs = [int(s) for s in h["seqs"]]
        if not seqs:
            if retry_s > 0:
                self._paused_until = time.monotonic() + retry_s
                self._sent_at.clear()  # whatever was in flight is re-sent after the pause
                self.warn("refused_" + reason, "%s: the node refused the stream for now (%s): %s; retrying in "
                          "%.1f s", self, reason, detail, retry_s)
                return
            self.stats.refused += len(self._pending)
            self._pending.clear()
            self._fail(f"the reconstruction node refused stream {self.config.stream_id} ({reason}): {detail}")
            return
        for seq in seqs:
            if retry_s > 0:
                self._sent_at.pop(seq, None)  # re-sent by _send_unsent when the window allows
                self._paused_until = max(self._paused_until, time.monotonic() + retry_s)
            elif self._pending.pop(seq, None) is not None or self._unacked.pop(seq, "gone") is None:
                self._sent_at.pop(seq, None)
                self._unacked.pop(seq, None)
                self.stats.refused += 1
        self.warn("refused_frames_" + reason, "%s: the node refused frame(s) %s (%s): %s%s", self, seqs[:8], reason,
                  detail, f"; re-sending after {retry_s:.1f} s" if retry_s > 0 else "")

    def _heartbeat(self, sock: zmq.Socket) -> None:
        with_room = sock.poll(0, zmq.POLLOUT)
        if with_room:
            sock.send_multipart(P.encode_control(P.HEARTBEAT, self.config.stream_id, t_ns=time.time_ns(),
                                                 node=self.epoch, epoch=self.epoch, live=self.source.live or None,
                                                 interval_s=self.config.heartbeat_s, role="camera"), zmq.NOBLOCK)

    def _open(self) -> tuple[zmq.Socket, zmq.Socket]:
        """The DEALER to the node and a monitor of its disconnections."""
        cfg = self.config
        sock = open_socket(self.ctx, zmq.DEALER, security=cfg.security, hwm=256)
        # Queue only to a live connection: frames sent while the node is down are not kept by libzmq and delivered
        # to the restarted node ahead of the in-order re-send (they stay pending here and go again, in order).
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(cfg.connect)
        return sock, monitor

    def _locate(self, lost: str | None) -> bool | None:
        """Ask the front where the stream lives (having `lost` that endpoint); True when it moved, None when the
        front did not answer."""
        from recon.errors import ReconError
        from recon.nodes.front import ask_front

        cfg = self.config
        assert cfg.front is not None
        try:
            where = ask_front(self.ctx, cfg.front, cfg.stream_id, lost, timeout_s=max(1.0, cfg.timeout_s),
                              security=cfg.security)
        except (ReconError, TimeoutError) as e:
            self.warn("front", "%s: %s", self, e)
            return None
        moved = where["connect"] != cfg.connect
        if moved:
            logger.info("%s: the front places stream %s on worker %s (%s)", self, cfg.stream_id, where.get("worker"),
                        where["connect"])
            cfg.connect = str(where["connect"])
        return moved

    def _close(self, sock: zmq.Socket, monitor: zmq.Socket) -> None:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)

    def _disconnected(self, monitor: zmq.Socket) -> bool:
        """True when the connection to the node dropped since the last call (events are drained)."""
        dropped = False
        while True:
            try:
                monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return dropped
            dropped = True

    def run(self) -> CameraStats:
        """Stream until the source ends and every recorded frame is acknowledged, or until stop()."""
        cfg = self.config
        if cfg.front:
            while self._locate(None) is None and not self._stop.wait(cfg.heartbeat_s):
                pass  # the front is not up yet, or has no live worker: nothing to stream to
        sock, monitor = self._open()
        next_locate = 0.0
        live = self.source.live
        frames = iter(self.source) if not live else None
        exhausted = False
        next_beat = next_send = next_expiry = 0.0
        last_heard = time.monotonic()
        lost = False
        count = 0
        logger.info("%s: streaming %s source, encoding %s", self, "live" if live else "recorded", cfg.encoding)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat(sock)
                    next_beat = now + cfg.heartbeat_s
                if not lost and self.node_id is not None and now - last_heard > cfg.timeout_s:
                    lost = True
                    logger.warning("%s: no word from the reconstruction node for %.1fs; waiting for it", self,
                                   now - last_heard)
                if lost and cfg.front and now >= next_locate:
                    next_locate = now + cfg.timeout_s
                    if self._locate(cfg.connect):  # the node went silent and the stream was moved: follow it
                        self.stats.redirects += 1
                        self._close(sock, monitor)
                        sock, monitor = self._open()
                        self._sent_at.clear()
                        self._reconnecting = True
                        if live:
                            self._pending.clear()
                paused = now < self._paused_until
                if now >= next_expiry:
                    next_expiry = now + 0.05
                    if self._disconnected(monitor):
                        # libzmq keeps what was queued for a dropped connection and delivers it once the node is
                        # back, ahead of the in-order re-send: a fresh socket drops it; in flight becomes unsent.
                        self._close(sock, monitor)
                        if cfg.front and self._locate(cfg.connect):
                            self.stats.redirects += 1
                        sock, monitor = self._open()
                        self._sent_at.clear()
                        self._reconnecting = True  # send nothing until the node says who it is (a restart?)
                        if live:
                            self._pending.clear()
                        logger.info("%s: connection to the reconstruction node dropped; reconnecting", self)
                    self._expire(sock, now, live, lost or paused)
                sent = False
                ready = self.node_id is not None and not lost and not paused and not self._reconnecting
                if not live and ready:
                    sent = self._send_unsent(sock)
                if ready and not exhausted and len(self._pending) < self.window and now >= next_send:
                    frame = self._next_frame(frames)
                    if frame is None:
                        exhausted = not live or self.source_finished()
                    else:
                        parts = self._encode(frame)
                        self._pending[frame.seq] = parts
                        if self._send(sock, frame.seq, parts):
                            self.stats.sent += 1
                        elif self._stop.is_set():
                            break  # refused before sending (oversize): stopped_on_error says why
                        sent = True  # if the send queue was full, _send_unsent sends it later
                        count += 1
                        if cfg.fps:
                            next_send = max(now, next_send) + 1.0 / cfg.fps
                        if cfg.max_frames is not None and count >= cfg.max_frames:
                            exhausted = True
                if exhausted and not self._pending:
                    break
                wait_ms = 0 if sent else 5 if live else 20
                if cfg.fps and not sent:
                    wait_ms = max(0, min(wait_ms, int(1000 * (next_send - now))))
                if (live and ready and wait_ms and not exhausted and len(self._pending) < self.window
                        and now >= next_send):
                    # Room for a frame: wait on the source, which wakes at the next capture (replies can wait a few
                    # ms; a frame sent late is latency), then look at the socket without waiting.
                    self.source.wait_frame(wait_ms / 1000)  # type: ignore[attr-defined] - LiveSource, PushSource
                    wait_ms = 0
                if zmq.zmq_poll([(sock, _POLLIN)], wait_ms):
                    while readable(sock):
                        parts = recv_parts(sock)
                        last_heard = time.monotonic()
                        if lost:
                            lost = False
                            logger.info("%s: reconstruction node is back", self)
                        self._on_reply(sock, parts)
        finally:
            self._close(sock, monitor)
            counts = getattr(self.source, "counts", None)
            if callable(counts):
                self.stats.captured, self.stats.drops = counts()
            else:
                self.stats.drops = self.source.drops
        st = self.stats
        logger.info("%s: done: sent %d, re-sent %d, acknowledged (processed) %d, dropped at the camera %d, dropped "
                    "at the node %d, refused %d, reconnects %d", self, st.sent, st.resent, st.acked, st.drops,
                    st.dropped_at_node, st.refused, st.reconnects)
        return self.stats

    def _expire(self, sock: zmq.Socket, now: float, live: bool, lost: bool) -> None:
        """Recorded: re-send overdue frames in order. Live: forget a frame whose ack will never come (its reply
        lost), so the camera does not stall: only after LIVE_ACK_TIMEOUT_S, since a slow backend step is not a
        lost ack (a restarted node is noticed by its id and clears the window at once)."""
        if live:
            for seq in [s for s, t in self._sent_at.items() if now - t > max(self.config.timeout_s,
                                                                               LIVE_ACK_TIMEOUT_S)]:
                self._pending.pop(seq, None)
                self._sent_at.pop(seq, None)
        elif not lost:
            for seq in sorted(self._sent_at)[:4]:
                if now - self._sent_at[seq] > self.config.resend_s and self._send(sock, seq, self._pending[seq]):
                    self.stats.resent += 1

    def _send_unsent(self, sock: zmq.Socket) -> bool:
        """Send pending frames not in flight (after a restart, or a full send queue), oldest first, within the
        window; returns True when something went out."""
        if len(self._sent_at) >= len(self._pending) or len(self._sent_at) >= self.window:
            return False  # the common case: everything pending is in flight
        sent = False
        for seq, parts in list(self._pending.items()):
            if len(self._sent_at) >= self.window:
                break
            if seq in self._sent_at:
                continue
            if not self._send(sock, seq, parts):
                break
            sent = True
            if seq in self._resend_from_restart:
                self._resend_from_restart.discard(seq)
                self.stats.resent += 1
            else:
                self.stats.sent += 1
        return sent

    def source_finished(self) -> bool:
        return bool(getattr(self.source, "finished", False))

    def _next_frame(self, frames: Any) -> Frame | None:
        if frames is not None:
            try:
                while True:
                    frame = next(frames, None)
                    self._index += 1
                    if frame is None or self._index % self.config.stride == 0:
                        return frame
                    self.stats.skipped_by_stride += 1
            except CorruptFrameError as e:
                # The reader was told to stop on corrupt frames: end the stream here, after what was sent is
                # acknowledged, and say why (the CLI exits non-zero).
                self.stats.stopped_on_error = str(e)
                logger.error("%s: stopping at a corrupt frame: %s", self, e)
                return None
        return self.source.take(0.0)  # type: ignore[attr-defined] - live sources: LiveSource, PushSource
