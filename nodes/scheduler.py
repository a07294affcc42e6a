"""The reconstruction node's batch scheduler: every tick, the streams with a pending frame step in one model call.

Why: N cameras on one device otherwise cost N forward passes (recon.models.batched). Each session thread still
owns its stream (queue, latest-frame-wins for live streams, acks, publishing: recon.nodes.sessions); instead of
calling `backend.step(frame)` itself it hands the frame to `BatchScheduler.step`, which blocks until the
scheduler thread has stepped it together with the other streams' pending frames
(`recon.backends.batching.step_many`: same backend, model and frame size share a call).

When a tick goes (per group of streams that can share a call):
- every stream seen in the group recently has a frame pending (nobody to wait for), or
- the oldest pending frame has waited `window_ms` (the batching window: a stream never waits longer than that,
  i.e. at most one tick, for a slower one), or
- a pending frame's deadline (`deadline_ms` after it was handed in, per stream or the default) would pass before
  the group's expected step time if it waited longer.
A stream has at most one frame pending (its session thread waits for it), so a live stream's latest-frame-wins is
its session queue's, unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from recon.backends.batching import StepOutcome, batch_group, step_many, step_unbatched  # noqa: F401 (re-export)
from recon.errors import ConfigError, ReconError
from recon.types import Frame, FrameResult

logger = logging.getLogger(__name__)


class SchedulerStoppedError(ReconError):
    """The scheduler stopped before the frame was stepped (the node is shutting down)."""


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching settings of a node.

    Attributes:
        window_ms: longest a pending frame waits for the rest of its group (0: step whatever is pending at once).
        deadline_ms: default per-frame deadline from hand-in (None: none); `step(..., deadline_ms=)` overrides.
        max_batch: most frames in one model call (larger groups go in several calls of one tick).
        active_s: a stream counts as part of its group (worth waiting for) this long after its last frame.
    """

    window_ms: float = 10.0
    deadline_ms: float | None = None
    max_batch: int = 16
    active_s: float = 2.0

    def __post_init__(self) -> None:
        if self.window_ms < 0:
            raise ConfigError(f"SchedulerConfig.window_ms must be >= 0, got {self.window_ms}")
        if self.deadline_ms is not None and self.deadline_ms <= 0:
            raise ConfigError(f"SchedulerConfig.deadline_ms must be > 0, got {self.deadline_ms}")
        if self.max_batch < 1:
            raise ConfigError(f"SchedulerConfig.max_batch must be >= 1, got {self.max_batch}")


@dataclass
class _Request:
    stream_id: str
    backend: Any
    frame: Frame
    group: Any
    submitted: float
    deadline: float | None
    done: threading.Event = field(default_factory=threading.Event)
    outcome: StepOutcome | None = None


@dataclass
class SchedulerStats:
    """Counters for `status` and benchmarks."""

    ticks: int = 0
    calls: int = 0
    frames: int = 0
    largest_batch: int = 0
    deadline_triggers: int = 0
    window_triggers: int = 0

    def as_dict(self) -> dict[str, Any]:
        mean = self.frames / self.calls if self.calls else 0.0
        return {"ticks": self.ticks, "calls": self.calls, "frames": self.frames, "mean_batch": round(mean, 2),
                "largest_batch": self.largest_batch, "deadline_triggers": self.deadline_triggers,
                "window_triggers": self.window_triggers}


class BatchScheduler:
    """Collects one pending frame per stream and steps groups of them together (see the module docstring).

    Args:
        config: batching window, deadlines, batch size.
        stepper: `step_many`-like function (tests and benchmarks pass an unbatched one to compare).
        clock: monotonic seconds.
    """

    def __init__(self, config: SchedulerConfig | None = None,
                 stepper: Callable[[Sequence[Any], Sequence[Frame]], list[StepOutcome]] = step_many,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or SchedulerConfig()
        self._stepper = stepper
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[str, _Request] = {}
        self._last_seen: dict[Any, dict[str, float]] = {}  # group -> stream -> last hand-in time
        self._step_s: dict[Any, float] = {}  # group -> smoothed step duration
        self._stopped = False
        self.stats = SchedulerStats()
        self._thread: threading.Thread | None = None

    def __str__(self) -> str:
        return f"BatchScheduler(window {self.config.window_ms} ms)"

    def start(self) -> BatchScheduler:
        self._thread = threading.Thread(target=self._run, name="recon-batch-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread; frames still pending get `SchedulerStoppedError` (their sessions report the fault)."""
        with self._cond:
            self._stopped = True
            pending, self._pending = list(self._pending.values()), {}
            self._cond.notify_all()
        for req in pending:
            req.outcome = SchedulerStoppedError(f"{self}: stopped before stream {req.stream_id!r} seq "
                                           f"{req.frame.seq} was stepped")
            req.done.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def step(self, stream_id: str, backend: Any, frame: Frame, deadline_ms: float | None = None
             ) -> list[FrameResult]:
        """Hand in `frame` of `stream_id` and wait for its results (or raise what its step raised)."""
        req = self.submit(stream_id, backend, frame, deadline_ms)
        req.done.wait()
        outcome = req.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return list(outcome or [])

    def submit(self, stream_id: str, backend: Any, frame: Frame, deadline_ms: float | None = None) -> _Request:
        """Queue a frame without waiting; `result.done` is set once it was stepped (`outcome` holds the result)."""
        now = self._clock()
        ms = deadline_ms if deadline_ms is not None else self.config.deadline_ms
        group = batch_group(backend, frame) or ("alone", id(backend))
        req = _Request(stream_id, backend, frame, group, now, None if ms is None else now + ms / 1000)
        with self._cond:
            if self._stopped:
                raise SchedulerStoppedError(f"{self}: stopped; stream {stream_id!r} seq {frame.seq} was not stepped")
            if stream_id in self._pending:
                raise ReconError(f"{self}: stream {stream_id!r} already has a frame pending (one at a time)")
            self._pending[stream_id] = req
            self._last_seen.setdefault(group, {})[stream_id] = now
            self._cond.notify_all()
        return req

    def forget(self, stream_id: str) -> None:
        """A closed stream is no longer waited for."""
        with self._cond:
            for seen in self._last_seen.values():
                seen.pop(stream_id, None)

    # -- the scheduler thread --------------------------------------------------------------------------------

    def due(self, now: float) -> tuple[list[list[_Request]], float | None]:
        """The groups that go now, and when to look again otherwise (None: nothing pending). Caller holds the
        lock or owns the scheduler (tests)."""
        by_group: dict[Any, list[_Request]] = {}
        for req in self._pending.values():
            by_group.setdefault(req.group, []).append(req)
        go: list[list[_Request]] = []
        wake: float | None = None
        window = self.config.window_ms / 1000
        for group, reqs in by_group.items():
            seen = self._last_seen.get(group, {})
            active = {s for s, t in seen.items() if now - t <= self.config.active_s}
            oldest = min(r.submitted for r in reqs)
            expected = self._step_s.get(group, 0.0)
            deadlines = [r.deadline for r in reqs if r.deadline is not None]
            latest_start = min(deadlines) - expected if deadlines else None
            if active <= {r.stream_id for r in reqs}:
                go.append(reqs)
            elif now - oldest >= window:
                self.stats.window_triggers += 1
                go.append(reqs)
            elif latest_start is not None and now >= latest_start:
                self.stats.deadline_triggers += 1
                go.append(reqs)
            else:
                t = oldest + window if latest_start is None else min(oldest + window, latest_start)
                wake = t if wake is None else min(wake, t)
        return go, wake

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    go, wake = self.due(self._clock())
                    if go:
                        for reqs in go:
                            for r in reqs:
                                del self._pending[r.stream_id]
                        break
                    self._cond.wait(None if wake is None else max(wake - self._clock(), 0.0005))
            self.stats.ticks += 1
            for reqs in go:
                self._step_group(reqs)

    def _step_group(self, reqs: list[_Request]) -> None:
        size = self.config.max_batch
        for start in range(0, len(reqs), size):
            part = reqs[start:start + size]
            t0 = self._clock()
            try:
                outcomes = self._stepper([r.backend for r in part], [r.frame for r in part])
            except Exception as e:  # noqa: BLE001 - a stepper fault goes to every frame it held
                outcomes = [e] * len(part)
            dt = self._clock() - t0
            group = part[0].group
            prev = self._step_s.get(group)
            self._step_s[group] = dt if prev is None else 0.8 * prev + 0.2 * dt
            self.stats.calls += 1
            self.stats.frames += len(part)
            self.stats.largest_batch = max(self.stats.largest_batch, len(part))
            for r, o in zip(part, outcomes, strict=True):
                r.outcome = o
                r.done.set()


class SharedBackends:
    """Builds each stream's backend on one shared model per backend configuration.

    Without it every session loads its own weights (N copies of the model, no batching possible). The first call
    builds a template with `create` and keeps it unused; every stream gets `template.spawn()` (backends without
    `spawn` are built one by one, as before). Thread-safe: sessions build their backends on their own threads.
    """

    def __init__(self, create: Callable[..., Any]) -> None:
        self._create = create
        self._lock = threading.Lock()
        self._templates: dict[tuple[str, str], Any] = {}

    def __call__(self, name: str, **options: Any) -> Any:
        key = (name, repr(sorted(options.items())))
        with self._lock:
            template = self._templates.get(key)
            if template is None:
                template = self._create(name, **options)
                if not hasattr(template, "spawn"):
                    return template
                self._templates[key] = template
            return template.spawn()
