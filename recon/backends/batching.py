"""Step many backends at once: those that can share a model call do (the stream batch), the others step alone.

`step_many` is what the node's batch scheduler (recon.nodes.scheduler) calls once per tick. Backends implementing
`recon.backends.base.Batchable` with equal `batch_key()` and frames of one size go through their class's
`step_batch` together; every other frame goes through its own `step`. A failing frame fails only its own stream:
the result list holds the exception in its place, as if that stream's `step` had raised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from recon.backends.base import Batchable
from recon.types import Frame, FrameResult

logger = logging.getLogger(__name__)

StepOutcome = list[FrameResult] | Exception


def batch_group(backend: Any, frame: Frame) -> tuple[Any, ...] | None:
    """The group a (backend, frame) pair may be batched in, or None when it steps alone."""
    if not isinstance(backend, Batchable):
        return None
    return (backend.batch_key(), frame.width, frame.height)


def _step_alone(backend: Any, frame: Frame) -> StepOutcome:
    try:
        return list(backend.step(frame))
    except Exception as e:  # noqa: BLE001 - handed back to the stream it belongs to
        return e


def step_unbatched(backends: Sequence[Any], frames: Sequence[Frame]) -> list[StepOutcome]:
    """Every frame through its own `step` (the baseline `recon bench serve` compares the stream batch with)."""
    return [_step_alone(b, f) for b, f in zip(backends, frames, strict=True)]


def step_many(backends: Sequence[Any], frames: Sequence[Frame]) -> list[StepOutcome]:
    """Step `backends[i]` by `frames[i]` for every i (distinct backends), batching what can be batched.

    Returns, per i, the results of that step or the exception it raised. A batch whose model call itself fails
    (a fault, not a refused frame) hands that exception to every member: their sessions may be half-stepped,
    exactly as a failing unbatched step leaves its one session.
    """
    if len(backends) != len(frames):
        raise ValueError(f"step_many: {len(backends)} backends for {len(frames)} frames")
    if len({id(b) for b in backends}) != len(backends):
        raise ValueError("step_many: a backend appears twice (one frame per stream per call)")
    out: list[StepOutcome | None] = [None] * len(frames)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (b, f) in enumerate(zip(backends, frames, strict=True)):
        key = batch_group(b, f)
        if key is None:
            out[i] = _step_alone(b, f)
        else:
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        if len(members) == 1:
            i = members[0]
            out[i] = _step_alone(backends[i], frames[i])
            continue
        lead = backends[members[0]]
        try:
            results = type(lead).step_batch([backends[i] for i in members], [frames[i] for i in members])
        except Exception as e:  # noqa: BLE001 - every member of the failed call gets the fault
            logger.debug("batched step of %d streams failed", len(members), exc_info=True)
            results = [e] * len(members)
        for i, r in zip(members, results, strict=True):
            out[i] = r
    return [o if o is not None else RuntimeError("step_many: no outcome") for o in out]
