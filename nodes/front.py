"""The service's front endpoint (REQ/REP, msgpack maps): "where does stream S live".

A camera of a multi-worker deployment (`recon serve --ray`) asks the front where to send its stream, then streams
straight to that worker (the data plane never goes through the front). When it loses its worker it asks again,
naming the endpoint it lost (`lost`), so the front checks that worker at once instead of at its next health check
and, if it is gone, answers with the worker the stream was moved to.

Requests: `{"cmd": "where", "stream_id": S, "lost": ENDPOINT | None}` -> `{"ok": true, "connect": ..., "publish":
..., "control": ..., "worker": N}`; `{"cmd": "workers"}` -> `{"ok": true, "workers": [...]}`. This module has no
Ray in it: the camera side imports it, and the placement is a callback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from recon.errors import ReconError
from recon.nodes import protocol as P
from recon.nodes.transport import Security, open_socket, request
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)


class FrontServer:
    """Answers placement requests on `endpoint` from `where(stream_id, lost)` and `workers()`; its own thread."""

    def __init__(self, context: zmq.Context, endpoint: str, *, where: Callable[[str, str | None], dict[str, Any]],
                 workers: Callable[[], list[dict[str, Any]]], security: Security | None = None) -> None:
        self.endpoint = endpoint
        self._where, self._workers = where, workers
        self.faults = WarnOnce(logger)
        self._stop = threading.Event()
        self._sock = open_socket(context, zmq.REP, limits=P.Limits(max_message_bytes=64 * 1024),
                                 security=security or Security(), server=True)
        self._sock.bind(endpoint)
        self._thread = threading.Thread(target=self._run, name="recon-front", daemon=True)

    def start(self) -> FrontServer:
        self._thread.start()
        logger.info("front endpoint %s: cameras ask here where their stream lives", self.endpoint)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._sock.poll(100):
                    continue
                raw = self._sock.recv_multipart()
                self._sock.send(msgpack.packb(self.handle(raw), use_bin_type=True))
        finally:
            self._sock.close(0)

    def handle(self, raw: list[bytes]) -> dict[str, Any]:
        try:
            cmd = P.decode_small_request(raw)
        except Exception as e:
            self.faults("bad_front_request", "malformed front request: %s", e)
            return {"ok": False, "error": f"malformed request: {e}"}
        try:
            if cmd["cmd"] == "where":
                sid, lost = cmd.get("stream_id"), cmd.get("lost")
                if not isinstance(sid, str) or not sid or not (lost is None or isinstance(lost, str)):
                    return {"ok": False, "error": "'where' needs a stream_id string (and lost: an endpoint or nil)"}
                return {"ok": True, **self._where(sid, lost)}
            if cmd["cmd"] == "workers":
                return {"ok": True, "workers": self._workers()}
        except ReconError as e:  # no live worker: the camera is told and asks again later
            return {"ok": False, "error": str(e)}
        return {"ok": False, "error": f"unknown command {cmd['cmd'][:32]!r}; use where, workers"}


def ask_front(context: zmq.Context, front: str, stream_id: str, lost: str | None = None, timeout_s: float = 5.0,
              security: Security | None = None) -> dict[str, Any]:
    """Where `stream_id` lives now (`connect`, `publish`, `control`, `worker`); raises ReconError when the front
    has no worker for it, TimeoutError when the front does not answer."""
    reply = request(context, front, {"cmd": "where", "stream_id": stream_id, "lost": lost}, timeout_s, security)
    if not reply.get("ok"):
        raise ReconError(f"front {front}: no worker for stream {stream_id}: {reply.get('error')}")
    return reply
