"""A bundle adjustment of the monocular VO run on a thread of its own, so a keyframe step does not wait for it.

Why: in a live stream the keyframe's local bundle adjustment was most of the step time and all of its tail
(hundreds of milliseconds to seconds on a loaded 2-core machine), and a live result is worth less the older it
is. The tracker keeps posing frames against the map as it was; the finished adjustment is applied at the start of
a later step (`MonoVO`), and the frames it moved are re-emitted as `is_update` revisions of their seqs.

A job owns copies of everything the solver reads (poses, points, observations, intrinsics), so the tracker may
change its map meanwhile; what changed is reconciled when the result is applied. The job is plain data apart
from its thread (`thread`, a `recon.utils.jobs.ThreadJob`, never saved): a checkpoint saves a finished job, which
a restored tracker applies like any other, and leaves a running one out (`state._settled`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recon.backends.geometric.bundle import bundle_adjust
from recon.utils.jobs import ThreadJob


@dataclass
class BundleJob:
    """One local bundle adjustment: its inputs (copies), and its outputs once `done`.

    Attributes:
        points: the map's point dict the job belongs to (identity: a job of a dropped map is discarded).
        kfs: the window's keyframe objects (the tracker's own, by identity); T_before: their poses at submission.
        pids: the adjusted points' track ids; known: every map point id at submission (points triangulated later
            were placed against the unrefined poses and move with the newest keyframe when the result is applied).
        obs_pt: the adjusted point (index into pids) of each observation, to find the outliers in `err`.
        args / options: positional and keyword arguments of `bundle_adjust`.
        T, X, err, focal_scale: its results (None until done); error: the solver's exception text, if it failed.
    """

    points: dict[int, np.ndarray]
    kfs: list[Any]
    T_before: np.ndarray
    pids: list[int]
    known: set[int]
    obs_pt: np.ndarray
    args: tuple[Any, ...]
    options: dict[str, Any]
    T: np.ndarray | None = None
    X: np.ndarray | None = None
    err: np.ndarray | None = None
    focal_scale: float = 1.0
    error: str | None = None
    done: bool = False
    thread: ThreadJob[Any] | None = field(default=None, repr=False)

    def start(self) -> BundleJob:
        """Run the adjustment on a daemon thread (`ThreadJob`: a dropped tracker does not keep the process
        alive)."""
        self.thread = ThreadJob("mono-bundle-adjustment", bundle_adjust, *self.args, **self.options).start()
        return self

    def ready(self) -> bool:
        """Whether the adjustment finished (its results are then in the job's fields)."""
        if self.thread is not None and self.thread.done:
            self._take()
        return self.done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is done (a checkpoint needs its result); False if `timeout` passed first."""
        if self.thread is not None and self.thread.wait(timeout):
            self._take()
        return self.done

    def _take(self) -> None:
        """Move the thread's result into the job, which is plain data from then on (it may be checkpointed)."""
        job, self.thread = self.thread, None
        assert job is not None
        if job.error is not None:
            self.error = job.error
        else:
            assert job.result is not None
            self.T, self.X, self.err, self.focal_scale = job.result
        self.args = ()  # the inputs go with the thread
        self.done = True
