"""Admission with real sockets in one process: fresh live frames, refusals both sides see, stream ownership,
validation gaps. The identity backend (pose x = seq cm) makes the output tell which frames were processed."""

from __future__ import annotations

import re
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from recon.errors import ConfigError
from recon.nodes import protocol as P
from recon.nodes.camera_node import CameraNode, CameraNodeConfig
from recon.nodes.recon_node import ReconNode, ReconNodeConfig
from recon.nodes.sources import PatternSource, as_live
from recon.nodes.transport import Security, check_bind, open_socket, recv_timeout
from recon.nodes.viewer_node import ViewerNode
from recon.types import Frame, FrameResult
from tests.nodes.node_support import Collect, inproc_node, status, tcp, wait_for

pytestmark = pytest.mark.timeout(60)


class Broken:
    name = "broken"

    def on_result(self, result: FrameResult) -> None:
        if result.seq % 2:
            raise OSError("disk full")

    def close(self) -> None:
        pass




_node = inproc_node


def _img(h: int = 8, w: int = 8) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


def _replies(sock: zmq.Socket, want: int, timeout: float = 5.0) -> list[P.Message]:
    got: list[P.Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        parts = recv_timeout(sock, 0.1)
        if parts is not None:
            msg = P.decode(parts)
            if msg.kind != P.CREDIT or msg.header["acked"] or msg.header.get("dropped"):
                got.append(msg)
    return got


def _refusals(messages: list[P.Message]) -> list[dict]:
    return [m.header for m in messages if m.kind == P.REFUSE]


def _serves_a_valid_stream(ctx: zmq.Context, endpoint: str, name: str = "valid") -> None:
    """After an attack the node still serves a well-behaved camera: every frame processed and acknowledged."""
    cam = CameraNode(PatternSource(5, 16, 12), CameraNodeConfig(connect=endpoint, stream_id=name), ctx)
    stats = cam.run()
    assert stats.stopped_on_error is None and stats.acked == 5, stats


def test_a_live_stream_holds_one_frame_and_reports_its_latency(ctx: zmq.Context) -> None:
    node = _node(ctx, "fresh", backend_options={"delay_ms": 30})
    sink = Collect()
    viewer = ViewerNode("inproc://fresh-out", [sink], context=ctx).start()
    try:
        assert viewer.wait_connected(5)
        source = as_live(PatternSource(60, 32, 24), fps=100)
        cam = CameraNode(source, CameraNodeConfig(connect="inproc://fresh", stream_id="live"), ctx)
        stats = cam.run()
        source.close()
        wait_for(lambda: len(sink.results) >= stats.acked, 5, "results of every processed frame")
        st = status(ctx, "inproc://fresh-control")
    finally:
        node.stop()
        viewer.stop()
    s = st["sessions"]["live"]
    assert s["live"] and s["queue_size"] == 1, "a live session holds one waiting frame"
    assert stats.drops > 10, "a 100 fps camera on a 30 fps model drops at the camera (its window is 1)"
    assert s["drops"] == 0 and stats.dropped_at_node == 0, "nothing queues up at the node"
    assert stats.acked == s["frames"], "the camera counts exactly the frames the node processed"
    assert stats.captured == stats.sent + stats.drops
    lat = s["latency_ms"]
    assert lat["n"] == s["frames"] and 25 <= lat["p50"] <= lat["p95"] <= lat["p99"]
    # One step (30 ms) plus at most a frame period of age and the transport: never a backlog of old frames.
    assert lat["p99"] < 3 * 30 + 200
    assert len(sink.latency) == len(sink.results) and min(sink.latency) > 0
    assert viewer.stats.latency["live"]["receive"]["n"] == len(sink.results)


def test_a_live_sender_ignoring_its_window_gets_newest_frames_and_counted_drops(ctx: zmq.Context) -> None:
    node = _node(ctx, "flood", backend_options={"delay_ms": 50})
    cam = open_socket(ctx, zmq.DEALER, hwm=1000)
    try:
        cam.connect("inproc://flood")
        for i in range(20):
            cam.send_multipart(P.encode_frame(Frame("f", i, time.time_ns(), _img()), epoch=1, live=True), copy=False)
        got = _replies(cam, 20, timeout=10)
        st = status(ctx, "inproc://flood-control")
    finally:
        cam.close(0)
        node.stop()
    acked = sorted(s for m in got for s in m.header["acked"])
    dropped = sorted(s for m in got for s in m.header.get("dropped", []))
    s = st["sessions"]["f"]
    assert sorted(acked + dropped) == list(range(20)), "every frame is either processed or reported dropped"
    assert s["drops"] == len(dropped) >= 15 and s["frames"] == len(acked)
    assert acked[-1] == 19, "the newest frame wins"
    assert st["budget"]["used_bytes"] == 0, "every reservation was released"


def test_an_oversize_frame_stops_the_camera_with_both_sizes(ctx: zmq.Context) -> None:
    limits = P.Limits.for_pixels(64 * 48, max_message_bytes=20_000)
    node = _node(ctx, "big", limits=limits, max_buffered_bytes=10**6)
    try:
        cam = CameraNode(PatternSource(5, 128, 96), CameraNodeConfig(connect="inproc://big", stream_id="big"), ctx)
        stats = cam.run()
        st = status(ctx, "inproc://big-control")
        _serves_a_valid_stream(ctx, "inproc://big")
    finally:
        node.stop()
    assert stats.stopped_on_error is not None and "limit of 20000 bytes" in stats.stopped_on_error
    size = int(re.search(r"frame 0 is (\d+) bytes", stats.stopped_on_error).group(1))  # type: ignore[union-attr]
    assert 128 * 96 * 3 + 72 <= size < 128 * 96 * 3 + 1024, "the frame's real size on the wire"
    assert "--max-message-mb" in stats.stopped_on_error and stats.sent == 0
    assert st["sessions"] == {}


def test_a_frame_over_max_pixels_is_refused_to_its_camera(ctx: zmq.Context) -> None:
    node = _node(ctx, "pixels", limits=P.Limits.for_pixels(64 * 48))
    try:
        cam = CameraNode(PatternSource(3, 128, 96), CameraNodeConfig(connect="inproc://pixels", stream_id="p"), ctx)
        stats = cam.run()
        st = status(ctx, "inproc://pixels-control")
        _serves_a_valid_stream(ctx, "inproc://pixels")
    finally:
        node.stop()
    assert stats.refused == 3 and stats.acked == 0 and stats.sent == 3, "refused for good, not re-sent forever"
    assert st["rejected"] == {"too_many_pixels": 3} and st["sessions"] == {}


def test_no_slot_and_quota_refusals_stop_the_camera_with_the_reason(ctx: zmq.Context) -> None:
    node = _node(ctx, "slots", max_streams=1, max_streams_per_peer=1)
    first = open_socket(ctx, zmq.DEALER)
    try:
        first.connect("inproc://slots")
        first.send_multipart(P.encode_frame(Frame("a", 0, 1, _img()), epoch=7), copy=False)
        assert _replies(first, 1)[0].header["acked"] == [0]
        cam = CameraNode(PatternSource(5, 8, 8), CameraNodeConfig(connect="inproc://slots", stream_id="b"), ctx)
        stats = cam.run()
        first.send_multipart(P.encode_frame(Frame("c", 0, 1, _img()), epoch=7), copy=False)
        refused = _refusals(_replies(first, 1))
        st = status(ctx, "inproc://slots-control")
        first.send_multipart(P.encode_frame(Frame("a", 1, 2, _img()), epoch=7), copy=False)
        assert _replies(first, 1)[0].header["acked"] == [1], "the stream holding the slot is still served"
    finally:
        first.close(0)
        node.stop()
    assert stats.stopped_on_error is not None and "no_slot" in stats.stopped_on_error
    assert "--max-streams" in stats.stopped_on_error
    assert refused and refused[0]["reason"] == "no_slot" and refused[0]["retry_s"] == 0 and refused[0]["seqs"] == []
    assert st["refused"]["no_slot"] >= 2 and list(st["sessions"]) == ["a"]


def test_the_per_peer_quota_bounds_what_one_sender_holds(ctx: zmq.Context) -> None:
    node = _node(ctx, "quota", max_streams_per_peer=2)
    sock = open_socket(ctx, zmq.DEALER)
    try:
        sock.connect("inproc://quota")
        for name in ("q0", "q1", "q2"):
            sock.send_multipart(P.encode_frame(Frame(name, 0, 1, _img()), epoch=3), copy=False)
        got = _replies(sock, 3)
        st = status(ctx, "inproc://quota-control")
    finally:
        sock.close(0)
        node.stop()
    refused = _refusals(got)
    assert [r["stream_id"] for r in refused] == ["q2"] and refused[0]["reason"] == "quota"
    assert sorted(st["sessions"]) == ["q0", "q1"] and st["refused"] == {"quota": 1}


def test_a_stream_belongs_to_its_sender(ctx: zmq.Context) -> None:
    node = _node(ctx, "own", owner_timeout_s=0.5)
    owner, other = open_socket(ctx, zmq.DEALER), open_socket(ctx, zmq.DEALER)
    try:
        owner.connect("inproc://own")
        other.connect("inproc://own")
        owner.send_multipart(P.encode_frame(Frame("desk", 0, 1, _img()), epoch=11), copy=False)
        assert _replies(owner, 1)[0].header["acked"] == [0]
        other.send_multipart(P.encode_frame(Frame("desk", 1, 2, _img(16, 8)), epoch=12), copy=False)
        other.send_multipart(P.encode_control(P.RESET, "desk", epoch=12, reason="request"))
        refused = _refusals(_replies(other, 2))
        owner.send_multipart(P.encode_control(P.HEARTBEAT, "desk", node=11, epoch=11))
        mid = status(ctx, "inproc://own-control")
        time.sleep(0.7)  # the owner goes silent past the owner timeout: another sender may take the stream over
        other.send_multipart(P.encode_frame(Frame("desk", 1, 2, _img()), epoch=12), copy=False)
        taken = _replies(other, 1)
        end = status(ctx, "inproc://own-control")
        _serves_a_valid_stream(ctx, "inproc://own")
    finally:
        owner.close(0)
        other.close(0)
        node.stop()
    assert [r["reason"] for r in refused] == ["not_owner", "not_owner"] and refused[0]["retry_s"] > 0
    assert mid["not_owner"] == 2 and mid["sessions"]["desk"]["session"] == 0, "no reset, no resolution change"
    assert mid["sessions"]["desk"]["frames"] == 1 and mid["sessions"]["desk"]["owner"]["epoch"] == 11
    assert mid["sessions"]["desk"]["owner"]["age_s"] > 0
    assert taken and taken[0].header["acked"] == [1] and end["takeovers"] == 1
    assert end["sessions"]["desk"]["owner"]["epoch"] == 12


def _certs(tmp: Path, name: str) -> tuple[str, str]:
    import zmq.auth

    tmp.mkdir(parents=True, exist_ok=True)
    return zmq.auth.create_certificates(str(tmp), name)


@pytest.mark.timeout(90)
def test_under_curve_another_key_can_never_take_a_stream(tmp_path: Path, ctx: zmq.Context) -> None:
    server_pub, server_sec = _certs(tmp_path / "server", "server")
    allowed = tmp_path / "allowed"
    _, alice_sec = _certs(allowed, "alice")
    _, bob_sec = _certs(allowed, "bob")
    ep_in = tcp()
    node = ReconNode(ReconNodeConfig(bind=ep_in, publish=tcp(), control=tcp(), backend="identity", heartbeat_s=0.05,
                                     owner_timeout_s=0.2, security=Security(server_sec, str(allowed), None)),
                     ctx).start()
    socks = {}
    try:
        for name, sec in (("alice", alice_sec), ("bob", bob_sec)):
            socks[name] = open_socket(ctx, zmq.DEALER, security=Security(sec, None, server_pub))
            socks[name].connect(ep_in)
        socks["alice"].send_multipart(P.encode_frame(Frame("cam", 0, 1, _img()), epoch=1), copy=False)
        assert _replies(socks["alice"], 1, 10)[0].header["acked"] == [0]
        time.sleep(0.4)  # alice is silent beyond the owner timeout: without CURVE bob could take over now
        socks["bob"].send_multipart(P.encode_control(P.RESET, "cam", epoch=1, reason="request"))
        socks["bob"].send_multipart(P.encode_frame(Frame("cam", 1, 2, _img()), epoch=1), copy=False)
        refused = _refusals(_replies(socks["bob"], 2, 10))
        st = node.status()
    finally:
        for s in socks.values():
            s.close(0)
        node.stop()
    assert [r["reason"] for r in refused] == ["not_owner", "not_owner"]
    assert all(r["retry_s"] == 0 for r in refused), "under CURVE waiting never helps another key"
    assert st["sessions"]["cam"]["session"] == 0 and st["sessions"]["cam"]["frames"] == 1
    assert st["sessions"]["cam"]["owner"]["key"], "the owner is its CURVE key"


def test_a_failing_sink_is_a_sink_error_and_the_other_sinks_get_every_result(ctx: zmq.Context) -> None:
    node = _node(ctx, "sinkerr")
    good = Collect()
    viewer = ViewerNode("inproc://sinkerr-out", [Broken(), good], context=ctx).start()
    try:
        assert viewer.wait_connected(5)
        cam = CameraNode(PatternSource(10, 8, 8), CameraNodeConfig(connect="inproc://sinkerr", stream_id="s"), ctx)
        cam.run()
        assert viewer.wait_results(10, 5)
    finally:
        node.stop()
        viewer.stop()
    assert [r.seq for r in good.results] == list(range(10))
    assert viewer.stats.sink_errors == {"broken": 5} and viewer.rejects.counts == {}


def test_validation_gaps_are_closed(ctx: zmq.Context) -> None:
    seen: dict[int, Frame] = {}
    node = _node(ctx, "valid", frame_hook=lambda f: seen.setdefault(f.seq, f) if f.stream_id == "v" else None)
    sink = Collect()
    viewer = ViewerNode("inproc://valid-out", [sink], context=ctx).start()
    sock = open_socket(ctx, zmq.DEALER)
    try:
        assert viewer.wait_connected(5)
        sock.connect("inproc://valid")
        good = [bytes(p) for p in P.encode_frame(Frame("v", 0, 1, _img()), epoch=2)]
        h = msgpack.unpackb(good[1])
        sock.send_multipart([good[0], msgpack.packb({**h, "seq": -1}), *good[2:]])  # reserved for control
        bad_K = {0: [[0.0, 0, 4], [0, 5.0, 4], [0, 0, 1]], 1: [[-3.0, 0, 4], [0, 5.0, 4], [0, 0, 1]],
                 2: [[1e30, 0, 4], [0, 1e30, 4], [0, 0, 1]], 3: [[5.0, 0, 4], [0, 5.0, 4], [0, 1, 1]]}
        for seq, K in bad_K.items():
            sock.send_multipart(P.encode_frame(Frame("v", seq, 1, _img(), K=np.array(K)), epoch=2), copy=False)
        depth = np.full((8, 8), 2.0, np.float32)
        depth[0, :3] = [np.nan, np.inf, -1.0]
        sock.send_multipart(P.encode_frame(Frame("v", 10, 1, _img(), depth=depth), epoch=2), copy=False)
        got = _replies(sock, 5)
        st = wait_for(lambda: (s := status(ctx, "inproc://valid-control"))["rejected_total"] == 5 and s, 5,
                      "five rejects")
        assert viewer.wait_results(1, 5)
        _serves_a_valid_stream(ctx, "inproc://valid", "after")
    finally:
        sock.close(0)
        node.stop()
        viewer.stop()
    refused = _refusals(got)
    assert sorted(r["seqs"][0] for r in refused) == [0, 1, 2, 3]
    assert {r["reason"] for r in refused} == {"bad_intrinsics"} and all(r["retry_s"] == 0 for r in refused)
    assert st["rejected"] == {"bad_field_value": 1, "bad_intrinsics": 4}
    assert [r.seq for r in sink.results if r.stream_id == "v"] == [10], \
        "NaN, infinite and negative depth are invalid pixels, not faults"
    got = seen[10].depth
    assert got is not None and got[0, :3].tolist() == [0.0, 0.0, 0.0] and float(got[1:].min()) == 2.0


def test_bind_checks_cover_every_transport(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    check_bind(f"ipc://{private}/recon.sock")
    check_bind("inproc://anything")
    check_bind("tcp://127.0.0.1:5555")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    for endpoint, match in ((f"ipc://{shared}/recon.sock", "other users"), ("ipc://@recon", "abstract"),
                            (f"ipc://{tmp_path}/missing/recon.sock", "does not exist"), ("tcp://0.0.0.0:5555",
                                                                                        "loopback"),
                            ("tcp://*:5555", "loopback"), ("pgm://eth0;239.192.1.1:5555", "network"),
                            ("udp://127.0.0.1:5555", "network"), ("nonsense", "transport")):
        with pytest.raises(ConfigError, match=match):
            check_bind(endpoint)
    check_bind(f"ipc://{shared}/recon.sock", allow_remote=True)
    check_bind("pgm://eth0;239.192.1.1:5555", allow_remote=True)


def test_heartbeats_delayed_by_a_busy_machine_raise_no_false_alarm(ctx: zmq.Context,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A publisher announcing 0.1 s heartbeats, then silent for 1.5 s (a loaded 2-core machine delays them that
    much): the subscriber does not report it gone (it would after max(5 intervals, 3 s))."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("inproc://beats")
    viewer = ViewerNode("inproc://beats", [], context=ctx).start()

    def beat() -> None:
        pub.send_multipart(P.encode_control(P.HEARTBEAT, t_ns=time.time_ns(), node=1, interval_s=0.1, role="recon"))

    try:
        deadline = time.monotonic() + 5
        while not viewer.wait_connected(0.1) and time.monotonic() < deadline:
            beat()
        for _ in range(3):
            beat()
            time.sleep(0.1)
        time.sleep(1.5)
        beat()
        time.sleep(0.2)
    finally:
        viewer.stop()
        pub.close(0)
    assert viewer.stats.heartbeats >= 4
    assert "no heartbeat" not in caplog.text
