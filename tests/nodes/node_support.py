"""Helpers for node tests: free ports, node processes with bounded lifetimes, polling control requests.

Every socket is closed with linger 0, every receive polls with a timeout, and every process started here
is killed in `NodeProcess.close()` (tests use them as context managers), so no test can hang or leak.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq

from recon.nodes.pipeline import free_port, node_command
from recon.nodes.recon_node import ReconNode, ReconNodeConfig
from recon.nodes.transport import request
from recon.types import FrameResult

REPO = Path(__file__).resolve().parents[2]


def tcp() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


class NodeProcess:
    """`recon node KIND ...` as a subprocess (through `python -m recon.nodes.KIND_cli`), log captured to a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log
        self._log = log.open("ab")
        # Checkpoints of nodes started here go next to their log (a restarted node in the same test finds them).
        env = {**os.environ, "PYTHONPATH": str(REPO), "RECON_LOG_LEVEL": "INFO", "OMP_NUM_THREADS": "1",
               "RECON_STATE_DIR": str(log.parent / "state"), **(env or {})}
        self.proc = subprocess.Popen(node_command(*args), cwd=REPO, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return -9

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.alive():
            self.kill9()
        self._log.close()

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until truthy; fail the test naming `what` when `timeout` passes."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (TimeoutError, zmq.ZMQError) as e:
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


def status(ctx: zmq.Context, control: str, timeout: float = 2.0) -> dict[str, Any]:
    return request(ctx, control, {"cmd": "status"}, timeout_s=timeout)


@contextlib.contextmanager
def zmq_context() -> Iterator[zmq.Context]:
    """A context whose sockets must all be closed; terminated with a bound so a leak fails, not hangs."""
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        import threading

        t = threading.Thread(target=ctx.term, daemon=True)
        t.start()
        t.join(10)
        if t.is_alive():
            raise AssertionError("zmq context did not terminate: a socket was left open")


class Collect:
    """A sink that keeps results (and the latency hook's figures) in memory."""

    name = "collect"

    def __init__(self) -> None:
        self.results: list[FrameResult] = []
        self.latency: list[float] = []
        self.closed = False

    def on_result(self, result: FrameResult) -> None:
        self.results.append(result)

    def on_latency(self, stream_id: str, seq: int, t_ns: int, ms: float) -> None:
        self.latency.append(ms)

    def close(self) -> None:
        self.closed = True


def inproc_node(ctx: zmq.Context, name: str, **kw: object) -> ReconNode:
    """A started identity-backend node on inproc://NAME (results on NAME-out, control on NAME-control)."""
    cfg = ReconNodeConfig(bind=f"inproc://{name}", publish=f"inproc://{name}-out", backend="identity",
                          heartbeat_s=0.05, **kw)  # type: ignore[arg-type]
    return ReconNode(cfg, ctx).start()
