"""Faults with real node processes on loopback: kill -9 either side mid-stream, and a fuzzed live socket.

Every process runs `recon node ...` through its module entry point, is killed in teardown, and every wait
is bounded. The identity backend (pose x = seq cm) makes the output tell which seqs arrived.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon.errors import ProtocolError
from recon.io.trajectory import read_tum_trajectory
from recon.nodes import protocol as P
from recon.nodes.transport import open_socket
from recon.types import Frame
from tests.nodes.node_support import NodeProcess, status, tcp, wait_for


def _recon_args(ep_in: str, ep_out: str, ep_ctl: str, *extra: str) -> list[str]:
    return ["recon", "--bind", ep_in, "--publish", ep_out, "--control", ep_ctl, "--backend", "identity",
            "--heartbeat", "0.2", *extra]


@pytest.mark.timeout(90)
def test_kill9_camera_mid_stream_and_restart_session_continues(tmp_path: Path, ctx: zmq.Context) -> None:
    ep_in, ep_out, ep_ctl = tcp(), tcp(), tcp()
    cam_args = ["camera", "--source", "pattern:100000:64x48", "--connect", ep_in, "--stream-id", "desk",
                "--encoding", "jpeg", "--fps", "100"]
    # Without CURVE a new camera process may take the stream over once its owner was silent --owner-timeout s.
    with NodeProcess(_recon_args(ep_in, ep_out, ep_ctl, "--owner-timeout", "1"), tmp_path / "recon.log") as node:
        with NodeProcess(cam_args, tmp_path / "cam1.log") as cam1:
            before = wait_for(lambda: (s := status(ctx, ep_ctl))["frames"] >= 30 and s, 30, "30 frames")
            cam1.kill9()
        time.sleep(0.5)
        mid = status(ctx, ep_ctl)
        with NodeProcess(cam_args, tmp_path / "cam2.log"):
            after = wait_for(lambda: (s := status(ctx, ep_ctl))["frames"] >= mid["frames"] + 30 and s, 30,
                             "30 more frames from the restarted camera")
        assert node.alive(), node.log()
    assert before["sessions"]["desk"]["session"] == 0
    assert after["sessions"]["desk"]["session"] == 0, "the session must continue, not reset"
    assert list(after["sessions"]) == ["desk"]
    assert after["results_out"] >= mid["results_out"] + 30
    assert after["rejected_total"] == 0


@pytest.mark.timeout(150)
def test_kill9_recon_node_during_recorded_replay_every_seq_exactly_once(tmp_path: Path, ctx: zmq.Context) -> None:
    n = 300
    ep_in, ep_out, ep_ctl = tcp(), tcp(), tcp()
    recon_args = _recon_args(ep_in, ep_out, ep_ctl, "-o", "delay_ms=8", "--queue-size", "6",
                             "--wait-subscribers", "1")
    out = tmp_path / "out"
    viewer = NodeProcess(["viewer", "--connect", ep_out, "--record", str(out), "--no-ply",
                          "--summary", str(tmp_path / "viewer.json")], tmp_path / "viewer.log")
    node = NodeProcess(recon_args, tmp_path / "recon1.log")
    cam = NodeProcess(["camera", "--source", f"pattern:{n}:64x48", "--connect", ep_in, "--stream-id", "rec",
                       "--encoding", "raw", "--resend", "2"], tmp_path / "cam.log")
    try:
        wait_for(lambda: status(ctx, ep_ctl)["frames"] >= 80, 60, "80 frames before the crash")
        node.kill9()
        assert cam.alive(), "the camera must survive its reconstruction node"
        time.sleep(1.0)
        node2 = NodeProcess(recon_args, tmp_path / "recon2.log")
        try:
            rc = cam.wait(90)
            assert rc == 0, cam.log()
            final = status(ctx, ep_ctl)
            assert node2.terminate() == 0
        finally:
            node2.close()
        assert viewer.terminate() == 0, viewer.log()
    finally:
        for p in (cam, node, viewer):
            p.close()
    cam_log = cam.log()
    assert "reconstruction node restarted" in cam_log
    t_ns, T = read_tum_trajectory(out / "trajectory.tum")
    seqs = np.round(T[:, 0, 3] / 0.01).astype(int)
    assert sorted(seqs.tolist()) == list(range(n)), "every seq exactly once in the recorded trajectory"
    summary = json.loads((tmp_path / "viewer.json").read_text())
    assert summary["results"] == n and summary["per_stream"] == {"rec": n}
    assert final["sessions"]["rec"]["frames"] < n, "the restarted node only saw what was not yet published"


# ---------------------------------------------------------------------------------------- fuzzing a live node

_GOOD = [bytes(p) for p in P.encode_frame(Frame("fuzz", 0, 1, np.zeros((6, 8, 3), np.uint8)), epoch=5)]
_HEADER = msgpack.unpackb(_GOOD[1], raw=False)
_JUNK = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=12), st.booleans(), st.none(),
                  st.floats(), st.lists(st.integers(-3, 2**40), max_size=4), st.binary(max_size=8))


def _with(key: str, value: object, payload: int | None = None) -> list[bytes]:
    h = {**_HEADER, "payloads": [dict(d) for d in _HEADER["payloads"]]}
    if payload is None:
        h[key] = value
    else:
        h["payloads"][0][key] = value
    return [_GOOD[0], msgpack.packb(h, use_bin_type=True), *_GOOD[2:]]


_MALFORMED = st.one_of(
    st.lists(st.binary(max_size=48), min_size=0, max_size=5),                           # random bytes
    st.integers(0, 2).map(lambda k: _GOOD[:k]),                                           # truncated multiparts
    st.integers(0, len(_GOOD[2]) - 1).map(lambda c: [*_GOOD[:2], _GOOD[2][:c]]),           # short payload
    st.lists(st.integers(1, 10**6), min_size=3, max_size=3).map(
        lambda s: _with("shape", [s[0] * 1000, s[1] * 1000, 3], 0)),                      # huge declared shapes
    st.sampled_from(["<f8", ">u2", "<f4", "O", "V4", "<c8", "|b1"]).map(lambda d: _with("dtype", d, 0)),
    st.integers(2, 2**31).map(lambda v: _with("v", v)),                                   # bad versions
    st.sampled_from(["recon/frame/v2", "recon/frame/v0", "recon/what/v1", ""]).map(lambda k: _with("kind", k)),
    st.tuples(st.sampled_from(["seq", "t_ns", "stream_id", "payloads", "v"]), _JUNK).filter(
        lambda kv: not (kv[0] in ("seq", "t_ns") and isinstance(kv[1], int) and not isinstance(kv[1], bool)
                        and 0 <= kv[1] < 2**62)).map(lambda kv: _with(*kv)),
)


class _Fuzzer:
    """Sends generated messages to a running node and counts what it sent."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.sent = 0
        self.invalid = 0

    def send(self, batch: list[list[bytes]]) -> None:
        for parts in batch:
            if not parts:
                continue  # zmq cannot send an empty multipart
            self.sock.send_multipart(parts)
            self.sent += 1
            try:  # the node must reject exactly what the reference decoder rejects
                P.to_frame(P.decode(parts))
            except ProtocolError:
                self.invalid += 1


@pytest.mark.timeout(150)
def test_fuzzed_live_node_socket_stays_up_and_bounded(tmp_path: Path, ctx: zmq.Context) -> None:
    ep_in, ep_out, ep_ctl = tcp(), tcp(), tcp()
    with NodeProcess(_recon_args(ep_in, ep_out, ep_ctl), tmp_path / "recon.log") as node:
        wait_for(lambda: status(ctx, ep_ctl), 30, "the node to answer status")
        sock = open_socket(ctx, zmq.DEALER, hwm=100000)
        sock.connect(ep_in)
        fuzzer = _Fuzzer(sock)
        # Warm up allocators with a first round, then measure RSS growth over the main flood.
        fuzzer.send([_with("v", 7)] * 200)
        wait_for(lambda: status(ctx, ep_ctl)["messages_in"] >= fuzzer.sent, 30, "warm-up messages")
        rss0 = status(ctx, ep_ctl)["rss_bytes"]

        @settings(max_examples=140, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])
        @given(st.lists(_MALFORMED, min_size=100, max_size=100))
        def flood(batch: list[list[bytes]]) -> None:
            fuzzer.send(batch)
            # Pace by the node's decoder: its backlog is bounded (overflow is dropped and counted, which would
            # blur the exact reject count asserted below), so stay well under it even on a loaded machine.
            wait_for(lambda: status(ctx, ep_ctl)["messages_in"] >= fuzzer.sent - 100, 30, "node catching up")

        flood()
        sent = fuzzer.sent
        st_ = wait_for(lambda: (s := status(ctx, ep_ctl))["messages_in"] >= sent and s, 60,
                       "all fuzz messages consumed")
        sock.close(0)
        assert sent >= 10_000
        assert node.alive()
        assert fuzzer.invalid >= 10_000 and fuzzer.invalid >= sent - 100
        assert st_["rejected_total"] == fuzzer.invalid and st_["drops"] == 0, st_["rejected"]
        assert st_["rejected"].get("incompatible_version", 0) > 200
        assert {"bad_multipart", "bad_shape", "bad_dtype", "size_mismatch"} <= set(st_["rejected"])
        assert st_["rss_bytes"] - rss0 < 64 * 2**20, "memory must stay bounded under a flood of bad input"
        # A valid stream afterwards is served normally.
        with NodeProcess(["camera", "--source", "pattern:40:64x48", "--connect", ep_in, "--stream-id", "after"],
                         tmp_path / "cam.log") as cam:
            assert cam.wait(60) == 0, cam.log()
        final = status(ctx, ep_ctl)
        assert final["sessions"]["after"]["frames"] == 40
        log = node.log()
    assert log.count("[incompatible_version]") == 1, "one clear log line per kind, then only counted"


@pytest.mark.timeout(90)
def test_sigterm_flushes_held_results_and_says_bye(tmp_path: Path, ctx: zmq.Context) -> None:
    """A clean stop flushes every backend (a windowed one holds results back) and publishes before exiting."""
    from recon.nodes.viewer_node import ViewerNode

    class Keep:
        def __init__(self) -> None:
            self.seqs: list[int] = []

        def on_result(self, r: object) -> None:
            self.seqs.append(r.seq)  # type: ignore[attr-defined]

        def close(self) -> None:
            pass

    ep_in, ep_out, ep_ctl = tcp(), tcp(), tcp()
    keep = Keep()
    viewer = ViewerNode(ep_out, [keep], context=ctx).start()
    with NodeProcess(_recon_args(ep_in, ep_out, ep_ctl, "-o", "window=4"), tmp_path / "recon.log") as node:
        assert viewer.wait_connected(30)
        node_id = status(ctx, ep_ctl)["node"]
        with NodeProcess(["camera", "--source", "pattern:12:32x24", "--connect", ep_in, "--stream-id", "w"],
                         tmp_path / "cam.log") as cam:
            assert cam.wait(60) == 0, cam.log()
        wait_for(lambda: keep.seqs == list(range(8)), 10, "results 0-7 (4 are held back by the windowed backend)")
        assert node.terminate() == 0, node.log()
        assert viewer.wait_bye(node_id, 10), "the node's last heartbeat (bye) must arrive after its results"
        log = node.log()
    viewer.stop()
    assert keep.seqs == list(range(12))
    assert "SIGTERM" in log and "stopped after" in log
