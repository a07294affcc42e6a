"""Socket helpers shared by the nodes: limits, CURVE security, loopback defaults and timed receives.

Every socket the nodes open goes through `open_socket`, so each one has a linger, a maximum message
size (zmq.MAXMSGSIZE: libzmq drops a peer that sends more) and bounded queues (high-water marks).
CURVE (pyzmq `zmq.auth`): a bind-side node loads its certificate (`--curve-secret-key`, a
`*.key_secret` file from zmq.auth.create_certificates) and the public keys it accepts
(`--curve-public-key`: a `*.key` file or a folder of them); a connect-side node loads its own
certificate and the server's public key (`--curve-server-key`).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from recon.errors import ConfigError
from recon.nodes.protocol import DEFAULT_LIMITS, Limits

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def new_node_id() -> int:
    """Random 62-bit id of one node process (restarts are told apart by it)."""
    return random.SystemRandom().getrandbits(62)


@dataclass(frozen=True)
class Security:
    """CURVE key material of one node; empty means plain TCP (fine on loopback only).

    Attributes:
        secret_key: this node's certificate file (`*.key_secret`, holds its public and secret key).
        public_keys: bind side: a `*.key` file or a folder of them: the clients allowed in.
        server_key: connect side: the server's public `*.key` file.
    """

    secret_key: str | None = None
    public_keys: str | None = None
    server_key: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.secret_key)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Security:
        sec = cls(getattr(args, "curve_secret_key", None), getattr(args, "curve_public_key", None),
                  getattr(args, "curve_server_key", None))
        for name in ("secret_key", "public_keys", "server_key"):
            path = getattr(sec, name)
            if path and not Path(path).exists():
                raise ConfigError(f"--curve-{name.replace('_', '-').rstrip('s')}: {path} does not exist "
                                  f"(make keys with zmq.auth.create_certificates)")
        if (sec.public_keys or sec.server_key) and not sec.secret_key:
            raise ConfigError("CURVE needs --curve-secret-key (this node's *.key_secret certificate)")
        return sec


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--curve-*` flags every node accepts."""
    g = parser.add_argument_group("security (CURVE)")
    g.add_argument("--curve-secret-key", metavar="FILE", help="this node's certificate (*.key_secret)")
    g.add_argument("--curve-public-key", metavar="PATH",
                   help="bind side: client public key file or folder of *.key files allowed in")
    g.add_argument("--curve-server-key", metavar="FILE", help="connect side: the server's public key (*.key)")


class Authenticator:
    """Runs pyzmq's ThreadAuthenticator for one context when a bind-side node uses CURVE."""

    def __init__(self, context: zmq.Context, security: Security) -> None:
        self._auth: Any = None
        if not (security.enabled and security.public_keys):
            return
        from zmq.auth.thread import ThreadAuthenticator

        location = Path(security.public_keys)
        folder = location if location.is_dir() else location.parent
        if location.is_file():
            # configure_curve loads a folder; a single-file allow list gets its own folder view.
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="recon-curve-")
            (Path(self._tmp.name) / location.name).write_bytes(location.read_bytes())
            folder = Path(self._tmp.name)
        self._auth = ThreadAuthenticator(context, log=logging.getLogger("recon.nodes.auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(folder))

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def _load(path: str, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load CURVE key {path}: {e}") from e
    if secret and secret_key is None:
        raise ConfigError(f"{path} holds no secret key; pass the *.key_secret file")
    return public, secret_key


def open_socket(context: zmq.Context, kind: int, *, limits: Limits = DEFAULT_LIMITS, security: Security | None = None,
                server: bool = False, hwm: int = 100) -> zmq.Socket:
    """A socket with linger 0, MAXMSGSIZE and HWMs set, and CURVE configured when keys are given."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if security is not None and security.enabled:
        public, secret = _load(security.secret_key or "", True)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        if server:
            sock.curve_server = True
        else:
            if not security.server_key:
                raise ConfigError("a connecting node with CURVE needs --curve-server-key")
            sock.curve_serverkey = _load(security.server_key, False)[0]
    return sock


def check_bind(endpoint: str, allow_remote: bool = False) -> None:
    """Refuse a bind others could reach unless allowed explicitly (DESIGN.md §6: loopback by default).

    - `inproc://`: this process only, always fine;
    - `tcp://`: loopback addresses only (127.0.0.1, localhost, ::1), not `*`, interfaces or other hosts;
    - `ipc://`: the folder must exist; a socket in a folder other users may write to (such as /tmp) or in the
      abstract namespace (`ipc://@name`) can be reached by every local user, so it needs `allow_remote`;
    - anything else (pgm, epgm, udp, ws, wss, vmci, tipc...) reaches the network and needs `allow_remote`.
    """
    scheme, sep, address = endpoint.partition("://")
    if not sep:
        raise ConfigError(f"endpoint {endpoint!r} has no transport (expected tcp://, ipc:// or inproc://)")
    hint = "pass --allow-remote (and CURVE keys) to serve beyond this user on this machine"
    if scheme == "inproc":
        return
    if scheme == "tcp":
        host = address.rsplit(":", 1)[0].strip("[]")
        if host not in (LOOPBACK, "localhost", "::1") and not allow_remote:
            raise ConfigError(f"refusing to bind {endpoint} beyond loopback; {hint}")
        return
    if scheme == "ipc":
        if address.startswith("@"):
            if not allow_remote:
                raise ConfigError(f"refusing to bind {endpoint}: an abstract ipc socket is reachable by every "
                                  f"local user; {hint}")
            return
        folder = Path(address).expanduser().resolve().parent
        if not folder.is_dir():
            raise ConfigError(f"cannot bind {endpoint}: folder {folder} does not exist")
        if len(address.encode()) > 107:
            raise ConfigError(f"cannot bind {endpoint}: ipc paths are limited to 107 bytes by the OS")
        if folder.stat().st_mode & 0o002 and not allow_remote:
            raise ConfigError(f"refusing to bind {endpoint}: other users may write to {folder}, so they could "
                              f"connect; use a private folder or {hint}")
        return
    if not allow_remote:
        raise ConfigError(f"refusing to bind {endpoint}: transport {scheme!r} reaches the network; {hint}")


_EVENTS, _POLLIN, _NOBLOCK, _SNDMORE = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK), int(zmq.SNDMORE)
_send_part = zmq.backend.Socket.send
_recv_part = zmq.backend.Socket.recv


def readable(sock: zmq.Socket) -> bool:
    """A message is waiting on `sock` (ZMQ_EVENTS): the hot loops drain sockets with this instead of a
    NOBLOCK receive that ends in zmq.Again, since raising and catching that costs ~2x the check. Plain ints, not
    pyzmq's enum flags: `&` on those is a Python-level call."""
    return bool(sock.getsockopt(_EVENTS) & _POLLIN)


def send_parts(sock: zmq.Socket, parts: list[Any], flags: int = _NOBLOCK, *, copy: bool = True,
               track: bool = False) -> Any:
    """`sock.send_multipart(parts, flags, copy=copy, track=track)` at about half its cost on the hot paths.

    pyzmq's send_multipart re-checks every part's type and goes through the high-level `send` (routing-id and
    group handling) per part; the parts here are bytes, memoryviews or zmq.Frames from our own encoders, so each
    goes straight to the low-level send. libzmq queues a multipart atomically: only the first part can fail with
    zmq.Again, so a failed send leaves nothing half-sent (as with send_multipart). Returns the last part's result
    (its MessageTracker with `track`)."""
    more = flags | _SNDMORE
    last = len(parts) - 1
    for i in range(last):
        _send_part(sock, parts[i], more, copy=copy, track=track)
    return _send_part(sock, parts[last], flags, copy=copy, track=track)


def recv_parts(sock: zmq.Socket, flags: int = _NOBLOCK) -> list[zmq.Frame]:
    """`sock.recv_multipart(flags, copy=False)` without its per-part getsockopt(RCVMORE) (each received
    zmq.Frame says whether more parts follow)."""
    part = _recv_part(sock, flags, copy=False)
    parts = [part]
    while part.more:
        part = _recv_part(sock, flags, copy=False)
        parts.append(part)
    return parts


def recv_timeout(sock: zmq.Socket, timeout_s: float, copy: bool = True) -> list[Any] | None:
    """Multipart from `sock` within `timeout_s`, or None: no receive can block forever."""
    if sock.poll(int(timeout_s * 1000), zmq.POLLIN):
        return sock.recv_multipart(copy=copy)
    return None


def request(context: zmq.Context, endpoint: str, command: dict[str, Any], timeout_s: float = 5.0,
            security: Security | None = None) -> dict[str, Any]:
    """One REQ/REP exchange with a node's control socket (msgpack map in, msgpack map out)."""
    import msgpack

    sock = open_socket(context, zmq.REQ, security=security)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb(command, use_bin_type=True))
        reply = recv_timeout(sock, timeout_s)
        if reply is None:
            raise TimeoutError(f"no reply from {endpoint} within {timeout_s}s to {command.get('cmd')!r}")
        return msgpack.unpackb(reply[0], raw=False)
    finally:
        sock.close(0)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_tuned = False


def tune_allocator(max_block: int = 32 * 2**20) -> bool:
    """Keep freed frame-sized blocks in the heap instead of returning them to the OS (glibc only; else a no-op).

    libzmq allocates every received message anew. With glibc's defaults a multi-megabyte block is mmapped and
    unmapped each time (or trimmed off the heap), so every frame's buffer is page-faulted in again: about 225
    faults for one 640x480 RGB frame. Raising the mmap and trim thresholds lets the same memory be reused; measured
    on the transport benchmark it removes ~90 % of the node's page faults (docs/benchmarks.md). Peak memory is
    unchanged; after a burst up to 4x `max_block` of free heap may stay with the process.
    """
    global _tuned
    if _tuned:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, max_block)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 4 * max_block))
    except (OSError, AttributeError):
        return False
    _tuned = ok
    return ok


_ctx_lock = threading.Lock()


def default_context() -> zmq.Context:
    """The process-wide context (inproc endpoints only work between sockets of one context)."""
    with _ctx_lock:
        return zmq.Context.instance(io_threads=max(1, min(2, os.cpu_count() or 1)))
