"""Admission control of the reconstruction node: who may send to a stream, and how much memory frames may hold.

Streams belong to their sender (DESIGN.md §6). A stream is bound to the peer that opened it:

- its ZeroMQ routing id (assigned by the ROUTER per connection: not guessable, never published), and
- under CURVE, its public key (the `User-Id` ZAP gives the connection), which is what really proves identity.

A message for a stream from another peer is refused unless it is the same sender on a new connection: under CURVE
the same key; without CURVE the same camera `epoch` (a random 62-bit id of the camera process, which a restarted
reconstruction node learns from its checkpoint). A peer that is neither may take a stream over only once its
owner has been silent (no frame, no heartbeat) for `owner_timeout_s` and never under CURVE with another key:
that is how a camera restarted without keys resumes its stream, while a live owner cannot be displaced.

A per-principal quota bounds how many streams one sender may hold (principal: the CURVE key, else the remote
address of a non-loopback tcp peer, else the connection), so one client cannot squat every slot.

`MemoryBudget` is the one node-wide bound on decoded frame bytes held between receipt and the end of the
backend step (queues, the frame being decoded, the frame being stepped).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True)
class Peer:
    """One connection to the ROUTER socket.

    Attributes:
        routing_id: the ROUTER's identity of the connection (what replies are addressed to).
        key: the CURVE public key (Z85) the connection authenticated with, or None.
        address: remote address of a tcp peer, or None (inproc, ipc).
    """

    routing_id: bytes
    key: str | None = None
    address: str | None = None

    @property
    def principal(self) -> str:
        """Who the per-peer quota counts against."""
        if self.key:
            return f"key:{self.key}"
        if self.address and self.address not in LOOPBACK_ADDRESSES:
            return f"addr:{self.address}"
        return f"conn:{self.routing_id.hex()}"

    @classmethod
    def from_frame(cls, routing_id: bytes, frame: Any) -> Peer:
        """The peer that sent `frame` (a zmq.Frame received with copy=False)."""
        return cls(routing_id, _property(frame, "User-Id"), _property(frame, "Peer-Address"))

    def describe(self) -> dict[str, Any]:
        return {"connection": self.routing_id.hex(), "key": self.key, "address": self.address}


def _property(frame: Any, name: str) -> str | None:
    try:
        value = frame.get(name)
    except (zmq.ZMQError, AttributeError, TypeError):
        return None
    return str(value) if value else None


@dataclass
class Owner:
    """The sender a stream is bound to (see the module docstring)."""

    peer: Peer | None
    epoch: int | None
    key: str | None
    since: float
    last_heard: float

    @classmethod
    def of(cls, peer: Peer, epoch: int) -> Owner:
        now = time.monotonic()
        return cls(peer, epoch, peer.key, now, now)

    @classmethod
    def restored(cls, epoch: int | None, key: str | None) -> Owner:
        """The owner a checkpoint names: its connection is gone (a new node process), its epoch and key remain."""
        now = time.monotonic()
        return cls(None, epoch, key, now, now)

    def describe(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        return {**(self.peer.describe() if self.peer else {"connection": None, "key": self.key, "address": None}),
                "epoch": self.epoch, "age_s": round(now - self.since, 3), "silent_s": round(now - self.last_heard, 3)}


@dataclass(frozen=True)
class Verdict:
    """Whether a peer may use a stream: `ok`, and when not, why and whether waiting can help (`retry_s`)."""

    ok: bool
    rebind: bool = False
    takeover: bool = False
    reason: str = ""
    detail: str = ""
    retry_s: float = 0.0


_OWNER = Verdict(True)
_REBIND = Verdict(True, rebind=True)
_TAKEOVER = Verdict(True, rebind=True, takeover=True)
_OTHER_KEY = Verdict(False, reason="not_owner", detail="the stream belongs to another CURVE key", retry_s=0.0)


def judge(owner: Owner, peer: Peer, epoch: int | None, *, curve: bool, owner_timeout_s: float,
          now: float | None = None) -> Verdict:
    """May `peer` (sending with camera `epoch`) use a stream owned by `owner`? See the module docstring.

    Asked for every frame: the common answers are shared constants (a frozen dataclass costs ~1 us to build)."""
    if owner.peer is not None and peer.routing_id == owner.peer.routing_id:
        return _OWNER
    if curve:
        if owner.key is not None and peer.key == owner.key:
            return _REBIND
        return _OTHER_KEY
    if epoch is not None and owner.epoch is not None and epoch == owner.epoch:
        return _REBIND
    now = time.monotonic() if now is None else now
    silent = now - owner.last_heard
    if silent >= owner_timeout_s:
        return _TAKEOVER
    return Verdict(False, reason="not_owner",
                   detail=f"the stream belongs to another sender, heard {silent:.1f} s ago (it may be taken over "
                          f"after {owner_timeout_s:g} s of silence)", retry_s=round(owner_timeout_s - silent, 3))


class MemoryBudget:
    """Bytes reserved by frames held by the node; a reservation beyond `limit` is refused (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self._used = 0
        self.peak = 0
        self.refused = 0
        self._lock = threading.Lock()

    def try_reserve(self, nbytes: int) -> bool:
        with self._lock:
            if self._used + nbytes > self.limit:
                self.refused += 1
                return False
            self._used += nbytes
            self.peak = max(self.peak, self._used)
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(0, self._used - nbytes)

    def describe(self) -> dict[str, int]:
        with self._lock:
            return {"limit_bytes": self.limit, "used_bytes": self._used, "peak_bytes": self.peak,
                    "refused": self.refused}
