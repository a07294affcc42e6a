"""Stopping loses nothing however slow the backend, a forced stop counts exactly what it gave up, and a camera
joining while its backend builds never delays the frames of running sessions."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from recon.nodes import protocol as P
from recon.nodes.pipeline import run_pipeline
from recon.nodes.recon_node import ReconNode, ReconNodeConfig
from recon.nodes.transport import open_socket, recv_timeout
from recon.nodes.viewer_node import ViewerNode
from recon.types import Frame, FrameResult
from tests.nodes.node_support import wait_for

pytestmark = pytest.mark.timeout(90)


class Slow:
    """A sink that takes its time (a slow disk, a busy viewer)."""

    name = "slow"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.seqs: list[int] = []

    def on_result(self, result: FrameResult) -> None:
        time.sleep(self.delay_s)
        self.seqs.append(result.seq)

    def close(self) -> None:
        pass




def test_a_stop_waits_for_a_slow_flush_and_a_slow_sink() -> None:
    """A windowed backend holds 12 results until its flush, each step and each sink call is slow: the stop still
    delivers every result (no timeout gives up on them) and nothing is counted lost."""
    sink = Slow(0.02)
    stats = run_pipeline("pattern:30:32x24", "identity", [sink], mode="inproc",
                         backend_options={"delay_ms": 40, "window": 12}, queue_size=2)
    assert sink.seqs == list(range(30))
    assert stats.results_lost == 0 and stats.node_status["results_lost"] == 0


def test_a_forced_stop_counts_exactly_what_it_gave_up() -> None:
    """Abort while the backend holds 6 results and 2 frames wait in the queue: 8 results are lost, and said."""
    sink = Slow(0.0)
    stop, abort = threading.Event(), threading.Event()
    held = 6

    class Trigger:
        name = "trigger"

        def on_result(self, result: FrameResult) -> None:
            if result.seq == 9:  # frames 0..15 stepped at most; 10.. are held by the window or queued
                stop.set()
                abort.set()

        def close(self) -> None:
            pass

    stats = run_pipeline("pattern:200:32x24", "identity", [sink, Trigger()], mode="inproc",
                         backend_options={"delay_ms": 30, "window": held}, queue_size=2, stop=stop, abort=abort)
    frames = stats.node_status["frames"]
    accepted = sum(s["accepted"] for s in stats.node_status["sessions"].values())
    assert len(sink.seqs) == frames - held, "results out: every stepped frame except those the window held"
    assert stats.results_lost == accepted - len(sink.seqs) > held - 1
    assert stats.results_lost == stats.node_status["results_lost"]


def test_a_joining_camera_never_delays_a_running_stream(ctx: zmq.Context) -> None:
    """Stream B's backend takes 3 s to build; stream A's acknowledgements keep coming every frame meanwhile."""
    node = ReconNode(ReconNodeConfig(bind="inproc://join", publish="inproc://join-out", backend="identity",
                                     heartbeat_s=0.05, backend_options={"build_ms": 3000, "delay_ms": 10}),
                     ctx).start()
    viewer = ViewerNode("inproc://join-out", [], context=ctx).start()
    a, b = open_socket(ctx, zmq.DEALER), open_socket(ctx, zmq.DEALER)
    img = np.zeros((8, 8, 3), np.uint8)
    gaps: list[float] = []
    try:
        assert viewer.wait_connected(5)
        a.connect("inproc://join")
        b.connect("inproc://join")
        a.send_multipart(P.encode_frame(Frame("a", 0, 1, img), epoch=1), copy=False)
        assert recv_timeout(a, 10) is not None, "stream A's own (slow) backend built"
        seq, last, joined_at = 1, time.monotonic(), None
        while seq < 200:
            a.send_multipart(P.encode_frame(Frame("a", seq, 1, img), epoch=1), copy=False)
            if seq == 5:
                b.send_multipart(P.encode_frame(Frame("b", 0, 1, img), epoch=2), copy=False)
                joined_at = time.monotonic()
            reply = recv_timeout(a, 5)
            assert reply is not None and P.decode(reply).header["acked"] == [seq]
            now = time.monotonic()
            gaps.append(now - last)
            last, seq = now, seq + 1
            if joined_at is not None and now - joined_at > 3.5:
                break
        b_acked = wait_for(lambda: recv_timeout(b, 0.2), 10, "stream B's first ack once its backend is built")
    finally:
        a.close(0)
        b.close(0)
        node.stop()
        viewer.stop()
    assert P.decode(b_acked).header["acked"] == [0]
    assert seq > 30, "stream A kept streaming while B's backend was built"
    assert max(gaps) < 1.0, f"stream A waited {max(gaps):.2f} s for an ack while B joined"
