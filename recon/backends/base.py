"""The backend interface (DESIGN.md §4) that every reconstruction method implements.

The reconstruction node and the CLI only ever talk to this protocol, so methods are interchangeable.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from recon.types import BackendStats, Frame, FrameResult


@runtime_checkable
class Backend(Protocol):
    """One streaming reconstruction session.

    `step` may return zero results (windowed methods emit late) or several (a backend may re-emit
    a revised pose with the same `seq`, marked `is_update`). `flush` emits whatever is pending at the
    end of a stream. `reset` forgets all state, as if newly constructed.
    """

    name: str

    def reset(self) -> None: ...

    def step(self, frame: Frame) -> list[FrameResult]: ...

    def flush(self) -> list[FrameResult]: ...

    def stats(self) -> BackendStats: ...


@dataclass
class BackendState:
    """A backend's streaming state, detached from the live objects so it can be written to disk.

    The checkpoint writer stores `arrays` in safetensors and the rest in a msgpack manifest, so everything
    here must be plain data: arrays are numpy arrays or CPU torch tensors under flat string names, `meta`
    holds msgpack-able values only (ints, floats, strings, bools, lists, dicts, bytes).

    Attributes:
        backend: registry name of the backend that produced it.
        version: version of that backend's state layout; a backend refuses to load any other.
        config: the options the backend was built with that shape its state (model configuration, budget,
            image grid ...); loading into a backend built with different values is refused.
        arrays: tensors of the state (KV caches, keyframe images, map points ...).
        meta: counters, sequence numbers, pending-frame bookkeeping.
    """

    backend: str
    version: int
    config: dict[str, Any]
    arrays: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Checkpointable(Protocol):
    """A backend whose streaming state survives a node restart (DESIGN.md §1: restart continuity).

    `save_state` is called between steps (never concurrently with `step`); `load_state` on a freshly built
    backend with the same configuration, after which the next `step` continues in the same world frame.
    A state the backend cannot take (other backend, version or configuration) raises
    `recon.errors.StateError` with the reason.
    """

    def save_state(self) -> BackendState: ...

    def load_state(self, state: BackendState) -> None: ...


@runtime_checkable
class Batchable(Protocol):
    """A backend whose sessions can be stepped together in one model call (the stream batch, issue 15).

    `batch_key()` is equal for backends that may share a call (same class and model object); frames of one
    batch must also have one size (the caller groups by it). `step_batch(backends, frames)` returns, per backend,
    exactly what `backend.step(frame)` would have, or the exception `step` would have raised for a frame refused
    before anything ran (that backend is left untouched; the others are stepped). The caller is
    `recon.backends.batching.step_many`.
    """

    def batch_key(self) -> Any: ...

    @classmethod
    def step_batch(cls, backends: list[Any], frames: list[Frame]) -> list[list[FrameResult] | Exception]: ...


def spawn_sharing_model(backend: Any) -> Any:
    """A fresh copy of `backend` whose `model` is the same object: everything else (session, caches, policies,
    generators, counters) is deep-copied and then reset, so the copy starts a new stream. Compiled steps are not
    shared (each session compiles its own)."""
    memo: dict[int, Any] = {id(backend.model): backend.model}
    session = getattr(backend, "session", None)
    if session is not None and getattr(session, "_compiled", None) is not None:
        memo[id(session._compiled)] = None
    import torch

    with torch.inference_mode():  # the template's tensors may be inference tensors
        new = copy.deepcopy(backend, memo)
    new.reset()
    return new
