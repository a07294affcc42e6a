"""The reconstruction node's control socket (REQ/REP, msgpack maps): status, reset, shutdown.

Requests are small and bounded (one msgpack map of at most 4 KiB, short strings, few keys); anything else gets
`{"ok": false, "error": ...}` and is counted. The socket has its own thread so a status request is answered while
every session is busy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from recon.nodes import protocol as P
from recon.nodes.transport import Security, open_socket
from recon.utils.log import WarnOnce

logger = logging.getLogger(__name__)

COMMANDS = ("status", "reset", "shutdown")


class ControlServer:
    """Answers control requests on `endpoint` with the callbacks it is given."""

    def __init__(self, context: zmq.Context, endpoint: str, *, security: Security, faults: WarnOnce,
                 status: Callable[[], dict[str, Any]], reset: Callable[[str], bool],
                 shutdown: Callable[[], None]) -> None:
        self.endpoint = endpoint
        self.faults = faults
        self._status, self._reset, self._shutdown = status, reset, shutdown
        self._stop = threading.Event()
        self._sock = open_socket(context, zmq.REP, limits=P.Limits(max_message_bytes=64 * 1024), security=security,
                                 server=True)

    def bind(self) -> None:
        self._sock.bind(self.endpoint)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._sock.poll(100):
                    continue
                raw = self._sock.recv_multipart()
                reply = self.handle(raw)
                self._sock.send(msgpack.packb(reply, use_bin_type=True))
                if reply.get("shutdown"):
                    threading.Thread(target=self._shutdown, name="recon-shutdown", daemon=True).start()
        finally:
            self._sock.close(0)

    def handle(self, raw: list[bytes]) -> dict[str, Any]:
        try:
            cmd = P.decode_small_request(raw)
        except Exception as e:
            self.faults("bad_control", "malformed control request: %s", e)
            return {"ok": False, "error": f"malformed request: {e}"}
        name = cmd["cmd"]
        if name == "status":
            return {"ok": True, **self._status()}
        if name == "reset":
            sid = cmd.get("stream_id")
            ok = isinstance(sid, str) and self._reset(sid)
            return {"ok": ok, **({} if ok else {"error": f"no session for stream {sid!r}"})}
        if name == "shutdown":
            return {"ok": True, "shutdown": True}
        return {"ok": False, "error": f"unknown command {name[:32]!r}; use {', '.join(COMMANDS)}"}
