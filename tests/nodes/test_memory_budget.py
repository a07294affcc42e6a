"""Decompression bombs against a real node process: its RSS stays within the memory budget it was given.

Three kinds of bomb, from 16 streams on 4 connections that ignore their credit window:
- a JPEG that honestly declares 4096x4096: over `--max-pixels`, refused from its header, never decoded;
- a JPEG that lies, declaring 64x48 while its own header says 1400x1400: refused before decoding;
- all-black 1400x1400 JPEGs (31 KB each, 5.9 MB decoded) that honestly declare their size: within the limits,
  so they queue, but only as many as the node-wide budget holds; the rest are refused (`busy`) and counted.

The budget (64 MiB) bounds every decoded frame held between receipt and the end of its step; what else the
process may allocate on top is bounded here by SLACK (below). The node keeps serving a valid stream afterwards.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import msgpack
import numpy as np
import psutil
import pytest
import zmq

from recon.nodes import protocol as P
from recon.nodes.transport import open_socket
from tests.nodes.node_support import NodeProcess, status, tcp, wait_for, zmq_context

BUDGET_MB = 64
# Besides the budget: libzmq's receive buffers (at most a few 31 KB messages per connection), the compressed
# bytes of refused frames (freed at once), and allocator fragmentation of ~6 MB blocks (at most one free block
# per decoding thread, 16 sessions). 16 x 6 MB bounds the last term.
SLACK_MB = 16 * 6
SIDE = 1400


def _jpeg(h: int, w: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8))
    assert ok
    return buf.tobytes()


def _frame_parts(stream: str, seq: int, data: bytes, declared: tuple[int, int]) -> list[bytes]:
    h = {"v": P.VERSION, "kind": P.FRAME, "stream_id": stream, "seq": seq, "t_ns": time.time_ns(), "epoch": 9,
         "payloads": [{"name": "image", "encoding": "jpeg", "dtype": "|u1", "shape": [*declared, 3],
                       "nbytes": len(data)}]}
    return [b"frame/" + stream.encode(), msgpack.packb(h, use_bin_type=True), data]


class PeakRss:
    """Samples a process's RSS in a thread; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.mark.timeout(150)
def test_jpeg_bombs_stay_within_the_memory_budget(tmp_path: Path) -> None:
    ep_in, ep_out, ep_ctl = tcp(), tcp(), tcp()
    args = ["recon", "--bind", ep_in, "--publish", ep_out, "--control", ep_ctl, "--backend", "identity",
            "-o", "delay_ms=300", "--heartbeat", "0.2", "--no-state", "--max-pixels", str(1500 * 1500),
            "--max-buffered-mb", str(BUDGET_MB), "--max-streams", "17"]
    honest, lying, huge = _jpeg(SIDE, SIDE), _jpeg(SIDE, SIDE), _jpeg(4096, 4096)
    with zmq_context() as ctx, NodeProcess(args, tmp_path / "recon.log") as node:
        wait_for(lambda: status(ctx, ep_ctl), 30, "the node to answer")
        socks = [open_socket(ctx, zmq.DEALER, hwm=10000) for _ in range(4)]
        try:
            for s in socks:
                s.connect(ep_in)
            # Warm up: one honest frame per stream (16 x 5.9 MB: some are refused already), so sessions and
            # allocators exist before the baseline.
            for k in range(16):
                socks[k % 4].send_multipart(_frame_parts(f"s{k}", 0, honest, (SIDE, SIDE)))
            wait_for(lambda: (s := status(ctx, ep_ctl))["messages_in"] >= 16 and s["budget"]["used_bytes"] == 0,
                     60, "warm-up frames handled")
            warm = status(ctx, ep_ctl)
            rss0 = psutil.Process(node.proc.pid).memory_info().rss
            sent = 0
            with PeakRss(node.proc.pid) as rss:
                for seq in range(1, 16):
                    for k in range(16):
                        sock = socks[k % 4]
                        sock.send_multipart(_frame_parts(f"s{k}", seq, honest, (SIDE, SIDE)))
                        sock.send_multipart(_frame_parts(f"s{k}", 1000 + seq, lying, (48, 64)))
                        sock.send_multipart(_frame_parts(f"s{k}", 2000 + seq, huge, (4096, 4096)))
                        sent += 3
                st = wait_for(lambda: (s := status(ctx, ep_ctl))["messages_in"] >= sent + 16 and s, 60,
                              "every bomb handled")
                st = wait_for(lambda: (s := status(ctx, ep_ctl))["budget"]["used_bytes"] == 0 and s, 60,
                              "queues drained")
        finally:
            for s in socks:
                s.close(0)
        # The node keeps serving: a valid camera streams through it.
        with NodeProcess(["camera", "--source", "pattern:10:64x48", "--connect", ep_in, "--stream-id", "after"],
                         tmp_path / "cam.log") as cam:
            assert cam.wait(60) == 0, cam.log()
        after = status(ctx, ep_ctl)
        assert node.alive()
    budget = st["budget"]
    assert budget["limit_bytes"] == BUDGET_MB * 2**20 and budget["peak_bytes"] <= budget["limit_bytes"]
    assert budget["refused"] > 0, "the honest bombs filled the budget and were refused, not queued"
    assert st["rejected"]["too_many_pixels"] == 15 * 16 and st["rejected"]["bad_image"] == 15 * 16
    refused = sum(s["refused"] for s in st["sessions"].values()) - sum(s["refused"] for s in warm["sessions"].values())
    processed = st["frames"] - warm["frames"]
    assert refused + processed == 15 * 16, "every honest frame is processed or refused: none vanishes"
    grown_mb = (rss.peak - rss0) / 2**20
    assert grown_mb < BUDGET_MB + SLACK_MB, f"RSS grew {grown_mb:.0f} MiB over a {BUDGET_MB} MiB budget"
    assert after["sessions"]["after"]["frames"] == 10
