"""Acknowledgements of recorded frames processed on the ingest thread share credits (`ingest.ACK_DELAY_S`).

What is asserted: every frame is acknowledged exactly once; a pipelined recorded camera gets far fewer credits than
frames (one per half window, not one per frame); the acknowledgements of a stream's last frames, which have nothing
to share a credit with, still go out once the delay has passed (the camera would otherwise wait for them forever).
Whether a run has such a tail depends on when the session went inline (0-3 frames are left over); three runs in
four have one.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import zmq

from recon.nodes import ingest, sessions
from recon.nodes import protocol as P
from recon.nodes.camera_node import CameraNode, CameraNodeConfig
from recon.nodes.sources import PatternSource
from tests.nodes.node_support import inproc_node, status

pytestmark = pytest.mark.timeout(90)


class CountingCamera(CameraNode):
    """A camera node that keeps the `acked` list of every credit it receives, with its arrival time."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.credits: list[tuple[float, list[int]]] = []

    def _on_reply(self, sock: zmq.Socket, parts: list[Any]) -> None:
        msg = P.decode(parts)
        if msg.kind == P.CREDIT and msg.header["acked"]:
            self.credits.append((time.monotonic(), list(msg.header["acked"])))
        super()._on_reply(sock, parts)


def test_a_pipelined_recorded_stream_gets_one_credit_per_half_window_and_its_last_acks_after_the_delay(
        ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    # Inline from the 4th frame on (a loaded machine preempts a 1 ms step now and then); a delay long enough that
    # every credit before the tail is sent because half the window was processed, never because time ran out.
    monkeypatch.setattr(sessions, "INLINE_MAX_S", 0.05)
    monkeypatch.setattr(sessions, "INLINE_AFTER", 4)
    monkeypatch.setattr(ingest, "ACK_DELAY_S", 0.5)
    frames, window = 122, 8
    node = inproc_node(ctx, "coalesce", queue_size=window)
    try:
        cam = CountingCamera(PatternSource(frames, 32, 24), CameraNodeConfig(connect="inproc://coalesce",
                                                                             stream_id="coalesce"), ctx)
        started = time.monotonic()
        stats = cam.run()
        took = time.monotonic() - started
        st = status(ctx, "inproc://coalesce-control")["sessions"]["coalesce"]
    finally:
        node.stop()
    acked = [s for _, seqs in cam.credits for s in seqs]
    assert sorted(acked) == list(range(frames)), "every frame acknowledged exactly once"
    assert stats.acked == frames and stats.resent == 0 and stats.refused == 0
    assert st["inline_frames"] >= frames // 2, st["inline_frames"]  # the session may build slowly on a loaded machine
    # Inline acks go out window / 2 at a time; the frames before the session went inline are acked as the session
    # thread sees fit (at most one credit each).
    inline_credits = [seqs for _, seqs in cam.credits if min(seqs) >= frames - st["inline_frames"]]
    assert len(inline_credits) <= st["inline_frames"] // (window // 2) + 2, [len(s) for s in inline_credits]
    assert max(len(s) for s in inline_credits) == window // 2
    # A credit for fewer than half a window can only be the timer's: the stream's last frames had no later frames
    # to share one with (how many depends on how many frames the session thread took before going inline, so the
    # tail has 0-3 frames), and it went out about ACK_DELAY_S after the credit before it; the camera finished.
    partial = [i for i, (_, seqs) in enumerate(cam.credits) if len(seqs) < window // 2
               and min(seqs) >= frames - st["inline_frames"]]
    assert all(i == len(cam.credits) - 1 for i in partial), "a partial credit before the tail"
    for i in partial:
        assert cam.credits[i][0] - cam.credits[i - 1][0] >= 0.3, "the tail's acks went out before the delay"
    assert max(cam.credits[-1][1]) == frames - 1
    assert took < 30


def test_live_frames_are_acknowledged_one_credit_each(ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live camera sends its next frame only when the previous one is acknowledged: nothing may wait for a
    delay, so each inline live frame gets its credit at once."""
    monkeypatch.setattr(sessions, "INLINE_MAX_S", 0.05)
    monkeypatch.setattr(sessions, "INLINE_AFTER", 4)
    monkeypatch.setattr(ingest, "ACK_DELAY_S", 5.0)
    frames = 40
    node = inproc_node(ctx, "live-acks", queue_size=8)
    try:
        source = PatternSource(frames, 32, 24)
        source.live = True  # type: ignore[misc] - the recorded pattern, sent as a live camera would send it
        source.take = lambda timeout=0.0, it=iter(source): next(it, None)  # type: ignore[attr-defined]
        source.wait_frame = lambda timeout: None  # type: ignore[attr-defined]
        source.finished = False  # type: ignore[attr-defined]
        cam = CountingCamera(source, CameraNodeConfig(connect="inproc://live-acks", stream_id="live-acks",
                                                      max_frames=frames), ctx)
        started = time.monotonic()
        stats = cam.run()
        took = time.monotonic() - started
        st = status(ctx, "inproc://live-acks-control")["sessions"]["live-acks"]
    finally:
        node.stop()
    assert stats.acked == frames
    assert st["inline_frames"] > 0
    assert all(len(seqs) == 1 for _, seqs in cam.credits)
    assert took < 5.0, "a live frame's acknowledgement waited for the coalescing delay"
