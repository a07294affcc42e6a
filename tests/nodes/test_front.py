"""The front endpoint and the stream directory of `recon serve --ray`, without Ray: placement on the least-loaded
worker, a dead worker's streams moved, the REQ/REP exchange cameras use (real sockets), malformed requests, and
`recon serve` without --ray configuring the same node as `recon node recon`."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from recon.errors import ReconError
from recon.nodes.front import FrontServer, ask_front
from recon.nodes.ray_serve import Directory
from recon.nodes.transport import recv_timeout, request
from tests.nodes.node_support import tcp, zmq_context


def _directory(n: int) -> Directory:
    d = Directory()
    for i in range(n):
        d.add(None, {"worker": i, "connect": f"tcp://127.0.0.1:{7000 + i}", "publish": f"tcp://127.0.0.1:{8000 + i}",
                     "control": f"tcp://127.0.0.1:{9000 + i}"})
    return d


def test_streams_go_to_the_least_loaded_worker_and_stay_there() -> None:
    d = _directory(3)
    first = {f"s{i}": d.where(f"s{i}")["worker"] for i in range(6)}
    assert sorted(first.values()) == [0, 0, 1, 1, 2, 2]
    assert {s: d.where(s)["worker"] for s in first} == first, "asking again gives the same worker"


def test_a_dead_worker_s_streams_move_to_the_live_ones() -> None:
    d = _directory(3)
    for i in range(6):
        d.where(f"s{i}")
    victim = d.workers[0]
    moved = sorted(victim.streams)
    d.drop([victim])
    assert not victim.alive and not victim.streams
    assert [m["stream"] for m in d.moves] == moved and all(m["to"] in (1, 2) for m in d.moves)
    assert all(d.where(s)["worker"] in (1, 2) for s in moved)
    assert d.where("new")["worker"] in (1, 2), "a dead worker gets no new stream"
    d.drop(d.workers[1:])
    with pytest.raises(ReconError, match="no live reconstruction worker"):
        d.where("s0")


def test_cameras_ask_the_front_over_zeromq() -> None:
    d = _directory(2)
    endpoint = tcp()
    with zmq_context() as ctx:
        front = FrontServer(ctx, endpoint, where=d.where, workers=d.describe).start()
        try:
            got = ask_front(ctx, endpoint, "cam0")
            assert got["connect"] == d.placement["cam0"].endpoints["connect"]
            listing = request(ctx, endpoint, {"cmd": "workers"})["workers"]
            assert [w["streams"] for w in listing] == [["cam0"], []]
            assert request(ctx, endpoint, {"cmd": "where"})["ok"] is False
            assert "unknown command" in request(ctx, endpoint, {"cmd": "nope"})["error"]
            sock = ctx.socket(zmq.REQ)
            sock.connect(endpoint)
            sock.send(b"\xc1 not msgpack")
            reply = msgpack.unpackb(recv_timeout(sock, 5)[0])
            sock.close(0)
            assert reply["ok"] is False and "malformed" in reply["error"]
            d.drop(d.workers)
            with pytest.raises(ReconError, match="no worker for stream cam0"):
                ask_front(ctx, endpoint, "cam0")
        finally:
            front.stop()


def test_serve_without_ray_configures_the_single_node() -> None:
    from recon.cli import build_parser
    from recon.nodes.recon_cli import config_from_args

    opts = ["--backend", "identity", "--bind", "tcp://127.0.0.1:6001", "--queue-size", "3", "--no-state"]
    serve = build_parser().parse_args(["serve", *opts])
    node = build_parser().parse_args(["node", "recon", *opts])
    assert serve.ray is None
    assert config_from_args(serve) == config_from_args(node)
    assert build_parser().parse_args(["serve", "--ray"]).ray == "auto"
    assert build_parser().parse_args(["serve", "--ray", "10.0.0.1:6379"]).ray == "10.0.0.1:6379"


def test_serve_ray_dead_after_is_parsed_and_a_too_short_one_is_refused_before_ray_starts(tmp_path) -> None:
    """`--dead-after` reaches the service (default 10 s); one shorter than a ping's timeout is refused by the real
    command with the reason, before any Ray cluster is started (no Ray session folder appears)."""
    import os
    import subprocess
    import sys

    from recon.cli import build_parser

    assert build_parser().parse_args(["serve", "--ray"]).dead_after == 10.0
    assert build_parser().parse_args(["serve", "--ray", "--dead-after", "30"]).dead_after == 30.0
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "recon.cli", "serve", "--ray", "--dead-after", "0.2",
                           "--front", tcp(), "--backend", "identity", "--no-state"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "--dead-after 0.2 s is shorter than one health ping's timeout (1 s)" in proc.stderr
    assert not list(tmp_path.glob("**/session_*")), "no Ray cluster was started"
