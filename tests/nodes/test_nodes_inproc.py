"""The node classes wired in one process: flow control, live drops, sessions, control socket, bad input, CURVE."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from recon.nodes import protocol as P
from recon.nodes.camera_node import CameraNode, CameraNodeConfig
from recon.nodes.pipeline import run_pipeline
from recon.nodes.recon_node import ReconNode, ReconNodeConfig
from recon.nodes.sources import PatternSource, as_live
from recon.nodes.transport import Security, open_socket, recv_timeout, request
from recon.nodes.viewer_node import ViewerNode
from recon.types import Frame, FrameResult
from tests.nodes.node_support import Collect, inproc_node, status, tcp, wait_for

pytestmark = pytest.mark.timeout(60)





_node = inproc_node


def test_recorded_pipeline_delivers_every_seq_once_in_order() -> None:
    sink = Collect()
    stats = run_pipeline("pattern:60:64x48", "identity", [sink], mode="inproc", backend_options={"delay_ms": 2},
                         queue_size=4)
    assert [r.seq for r in sink.results] == list(range(60))
    assert sink.closed
    assert stats.camera.sent == 60 and stats.camera.acked == 60 and stats.camera.resent == 0
    assert stats.node_status["sessions"]["pattern64x48"]["drops"] == 0
    np.testing.assert_allclose([r.T_world_cam[0, 3] for r in sink.results], 0.01 * np.arange(60))


def test_live_source_keeps_only_the_newest_frame_and_counts_drops(ctx: zmq.Context) -> None:
    node = _node(ctx, "live", backend_options={"delay_ms": 25}, queue_size=2)
    sink = Collect()
    viewer = ViewerNode("inproc://live-out", [sink], context=ctx).start()
    try:
        assert viewer.wait_connected(5)
        source = as_live(PatternSource(150, 32, 24), fps=300)
        cam = CameraNode(source, CameraNodeConfig(connect="inproc://live", stream_id="live"), ctx)
        stats = cam.run()
        source.close()
        st = status(ctx, "inproc://live-control")
    finally:
        node.stop()
        viewer.stop()
    assert stats.drops > 30, "a 300 fps camera on a 40 fps model must drop frames at the camera"
    assert stats.sent + stats.drops == 150
    assert st["sessions"]["live"]["queue"] <= 2
    seqs = [r.seq for r in sink.results]
    assert seqs == sorted(seqs) and len(seqs) >= 5


def _send(sock: zmq.Socket, frame: Frame, epoch: int = 1) -> None:
    sock.send_multipart(P.encode_frame(frame, epoch=epoch), copy=False)


def _img(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


def test_resolution_change_resets_the_session_and_duplicates_are_reacked(ctx: zmq.Context) -> None:
    node = _node(ctx, "res")
    sink = Collect()
    viewer = ViewerNode("inproc://res-out", [sink], context=ctx).start()
    cam = open_socket(ctx, zmq.DEALER)
    try:
        assert viewer.wait_connected(5)
        cam.connect("inproc://res")
        _send(cam, Frame("s", 0, 1, _img(8, 8)))
        assert viewer.wait_results(1, 5)
        _send(cam, Frame("s", 0, 1, _img(8, 8)))  # a re-send after publication: acked again, not re-published
        _send(cam, Frame("s", 1, 2, _img(16, 8)))
        assert viewer.wait_results(2, 5)
        acked: list[int] = []

        def three_acks() -> bool:
            parts = recv_timeout(cam, 0.2)
            if parts is not None:
                acked.extend(P.decode(parts).header["acked"])
            return len(acked) >= 3

        wait_for(three_acks, 5, "three acks")
        st = status(ctx, "inproc://res-control")
    finally:
        cam.close(0)
        node.stop()
        viewer.stop()
    assert sorted(acked) == [0, 0, 1]
    assert [r.seq for r in sink.results] == [0, 1]
    assert st["sessions"]["s"]["session"] == 1 and st["sessions"]["s"]["size"] == [16, 8]
    assert viewer.stats.resets == 1


def test_control_socket_status_reset_and_errors(ctx: zmq.Context) -> None:
    node = _node(ctx, "ctl")
    cam = open_socket(ctx, zmq.DEALER)
    try:
        cam.connect("inproc://ctl")
        _send(cam, Frame("a", 0, 1, _img(4, 4)))
        wait_for(lambda: status(ctx, "inproc://ctl-control")["frames"] == 1, 5, "one frame processed")
        st = status(ctx, "inproc://ctl-control")
        for key in ("sessions", "fps", "drops", "rejected", "rss_bytes", "budget", "refused", "results_lost"):
            assert key in st
        assert st["sessions"]["a"]["queue"] == 0 and st["rss_bytes"] > 10**6
        assert request(ctx, "inproc://ctl-control", {"cmd": "reset", "stream_id": "a"})["ok"]
        wait_for(lambda: status(ctx, "inproc://ctl-control")["sessions"]["a"]["session"] == 1, 5, "session reset")
        assert not request(ctx, "inproc://ctl-control", {"cmd": "reset", "stream_id": "nope"})["ok"]
        cam.send_multipart(P.encode_control(P.RESET, "a", reason="request"))  # a camera may ask too
        wait_for(lambda: status(ctx, "inproc://ctl-control")["sessions"]["a"]["session"] == 2, 5, "camera reset")
        assert "unknown command" in request(ctx, "inproc://ctl-control", {"cmd": "dance"})["error"]
        req = open_socket(ctx, zmq.REQ)
        req.connect("inproc://ctl-control")
        req.send(b"\xc1garbage")
        assert not msgpack.unpackb(recv_timeout(req, 5)[0])["ok"]
        req.close(0)
        assert request(ctx, "inproc://ctl-control", {"cmd": "shutdown"})["shutdown"]
        assert node.wait(5)
    finally:
        cam.close(0)
        node.stop()


def test_a_malformed_control_request_gets_an_error_reply_and_the_control_socket_keeps_answering(
        ctx: zmq.Context) -> None:
    node = _node(ctx, "badctl")
    req = open_socket(ctx, zmq.REQ)
    try:
        req.connect("inproc://badctl-control")
        answers = []
        for raw in ([b"a", b"b"], [b"\xc1 not msgpack"], [msgpack.packb([1, 2])], [msgpack.packb({"cmd": 3})],
                    [msgpack.packb({"cmd": "status", "pad": "x" * 5000})]):
            req.send_multipart(raw)
            assert req.poll(5000), "the control socket must answer every request"
            answers.append(msgpack.unpackb(req.recv(), raw=False))
        st = status(ctx, "inproc://badctl-control")
    finally:
        req.close(0)
        node.stop()
    assert all(a["ok"] is False and a["error"].startswith("malformed request") for a in answers), answers
    assert st["ok"] is True


def test_malformed_messages_are_counted_by_kind_and_the_node_keeps_serving(ctx: zmq.Context) -> None:
    node = _node(ctx, "bad")
    sink = Collect()
    viewer = ViewerNode("inproc://bad-out", [sink], context=ctx).start()
    cam = open_socket(ctx, zmq.DEALER)
    try:
        assert viewer.wait_connected(5)
        cam.connect("inproc://bad")
        good = [bytes(p) for p in P.encode_frame(Frame("g", 0, 1, _img(4, 4)))]
        h = msgpack.unpackb(good[1])
        cam.send_multipart([b"x"])
        cam.send_multipart([b"x", b"not msgpack \xc1"])
        cam.send_multipart([good[0], msgpack.packb({**h, "v": 9}), good[2]])
        cam.send_multipart(good[:2])
        cam.send_multipart([*good[:2], good[2][:-1]])
        cam.send_multipart([good[0], msgpack.packb({**h, "kind": P.RESULT}), good[2]])
        cam.send_multipart(good)
        assert viewer.wait_results(1, 5)
        st = wait_for(lambda: (s := status(ctx, "inproc://bad-control"))["rejected_total"] == 6 and s, 5,
                      "six rejects")
    finally:
        cam.close(0)
        node.stop()
        viewer.stop()
    assert st["rejected"]["incompatible_version"] == 1
    assert st["rejected"]["bad_multipart"] == 2
    assert st["rejected"]["bad_header"] == 1
    assert st["rejected"]["size_mismatch"] == 1
    assert st["rejected"]["missing_field"] == 1  # a result sent to the ingest socket lacks frame-side fields
    assert [r.stream_id for r in sink.results] == ["g"]


def _certs(tmp: Path, name: str) -> tuple[str, str]:
    import zmq.auth

    tmp.mkdir(parents=True, exist_ok=True)
    pub, sec = zmq.auth.create_certificates(str(tmp), name)
    return pub, sec


@pytest.mark.timeout(90)
def test_curve_client_without_the_right_key_gets_nothing_through(tmp_path: Path, ctx: zmq.Context) -> None:
    server_pub, server_sec = _certs(tmp_path / "server", "server")
    allowed = tmp_path / "allowed"
    client_pub, client_sec = _certs(allowed, "client")
    _, rogue_sec = _certs(tmp_path / "rogue", "rogue")
    ep_in, ep_out = tcp(), tcp()
    node = ReconNode(ReconNodeConfig(bind=ep_in, publish=ep_out, control=tcp(), backend="identity",
                                     heartbeat_s=0.05,
                                     security=Security(server_sec, str(allowed), None)), ctx).start()
    good = Security(client_sec, None, server_pub)
    try:
        # Results: a subscriber with the right keys hears heartbeats; one with a rogue key or none hears nothing.
        listeners = {}
        for name, sec in (("good", good), ("rogue", Security(rogue_sec, None, server_pub)), ("plain", None)):
            listeners[name] = ViewerNode(ep_out, [Collect()], context=ctx, security=sec).start()
        assert listeners["good"].wait_connected(10)
        frame = Frame("secure", 0, 1, _img(4, 4))
        for name, sec in (("rogue", Security(rogue_sec, None, server_pub)), ("plain", None),
                          ("wrong-server", Security(client_sec, None, client_pub))):
            cam = open_socket(ctx, zmq.DEALER, security=sec)
            cam.connect(ep_in)
            _send(cam, Frame(name, 0, 1, _img(4, 4)))
            assert recv_timeout(cam, 1.0) is None, f"{name} client got a reply"
            cam.close(0)
        cam = open_socket(ctx, zmq.DEALER, security=good)
        cam.connect(ep_in)
        _send(cam, frame)
        assert recv_timeout(cam, 10) is not None
        cam.close(0)
        assert listeners["good"].wait_results(1, 10)
        time.sleep(0.3)
        st = node.status()
    finally:
        node.stop()
        for v in listeners.values():
            v.stop()
    assert list(st["sessions"]) == ["secure"] and st["messages_in"] == 1
    assert listeners["rogue"].stats.heartbeats == 0 and listeners["plain"].stats.heartbeats == 0
    assert listeners["rogue"].stats.results == 0 and listeners["plain"].stats.results == 0


def test_non_loopback_bind_is_refused_by_default() -> None:
    from recon.errors import ConfigError

    with pytest.raises(ConfigError, match="loopback"):
        ReconNode(ReconNodeConfig(bind="tcp://0.0.0.0:5999", publish="tcp://127.0.0.1:5998", backend="identity"))


def test_results_reach_a_rerun_recording(tmp_path: Path) -> None:
    """The viewer side logs through recon.viewer: an .rrd file with the streamed results."""
    from recon.nodes.viewer_cli import make_viewer_sink

    rrd = tmp_path / "live.rrd"
    sink = make_viewer_sink(f"rrd:{rrd}")
    stats = run_pipeline("pattern:8:32x24", "identity", [sink], mode="inproc", backend_options={"points": True})
    assert stats.viewer.results == 8
    assert rrd.stat().st_size > 10_000


def test_strict_inproc_run_re_raises_a_backend_fault_and_keeps_frame_meta() -> None:
    """What `recon replay` relies on: its own backend instance, Frame.meta intact, and faults that propagate."""
    from recon.backends.identity import IdentityBackend
    from recon.nodes.pipeline import run_replay_inproc

    class Picky(IdentityBackend):
        def step(self, frame: Frame) -> list[FrameResult]:
            if frame.meta.get("tag") != frame.seq * 10:
                raise AssertionError("meta lost on the way")
            if frame.seq == 5:
                raise RuntimeError("model exploded at seq 5")
            return super().step(frame)

    class Seq:
        name = "meta"
        camera_info = None

        def __iter__(self):  # type: ignore[no-untyped-def]
            for i in range(10):
                yield Frame("meta", i, i, _img(4, 4), meta={"tag": i * 10})

    backend, sink = Picky(), Collect()
    with pytest.raises(RuntimeError, match="seq 5"):
        run_replay_inproc(Seq(), backend, sink)
    assert [r.seq for r in sink.results] == [0, 1, 2, 3, 4]
    assert backend.stats().frames_in == 5


def test_idle_session_is_flushed_and_closed(ctx: zmq.Context) -> None:
    """A stream that goes quiet frees its slot; its backend is flushed first, so held results still come out."""
    node = _node(ctx, "idle", session_idle_s=0.5, backend_options={"window": 2})
    sink = Collect()
    viewer = ViewerNode("inproc://idle-out", [sink], context=ctx).start()
    cam = open_socket(ctx, zmq.DEALER)
    try:
        assert viewer.wait_connected(5)
        cam.connect("inproc://idle")
        for i in range(5):
            _send(cam, Frame("quiet", i, i, _img(4, 4)))
        assert viewer.wait_results(3, 5)
        assert viewer.wait_results(5, 10), "the flush on close publishes the 2 held results"
        wait_for(lambda: status(ctx, "inproc://idle-control")["sessions"]["quiet"]["state"] == "closed", 10,
                 "session closed")
        _send(cam, Frame("quiet", 5, 5, _img(4, 4)))  # the stream comes back: a new session
        wait_for(lambda: (s := status(ctx, "inproc://idle-control")["sessions"]["quiet"])["state"] == "running"
                 and s["frames"] == 1, 10, "new session")
    finally:
        cam.close(0)
        node.stop()
        viewer.wait_bye(node.node_id, 5)  # the stop flushed seq 5 (held back) before saying bye
        viewer.stop()
    assert [r.seq for r in sink.results] == [0, 1, 2, 3, 4, 5]
