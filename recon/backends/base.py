"""The backend interface (DESIGN.md §4) that every reconstruction method implements.

The reconstruction node and the CLI only ever talk to this protocol, so methods are interchangeable.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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
