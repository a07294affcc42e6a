"""A bundle adjustment of the monocular VO run on a thread of its own, so a keyframe step does not wait for it.

Why: in a live stream the keyframe's local bundle adjustment was most of the step time and all of its tail
(hundreds of milliseconds to seconds on a loaded 2-core machine), and a live result is worth less the older it
is. The tracker keeps posing frames against the map as it was; the finished adjustment is applied at the start of
a later step (`MonoVO`), and the frames it moved are re-emitted as `is_update` revisions of their seqs.

A job owns copies of everything the solver reads (poses, points, observations, intrinsics), so the tracker may
change its map meanwhile; what changed is reconciled when the result is applied. The job is plain data apart
from its thread (`thread`, never saved): a checkpoint waits for the thread (`wait`) and saves the finished job,
which a restored tracker applies like any other.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recon.backends.geometric.bundle import bundle_adjust

logger = logging.getLogger(__name__)


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
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> BundleJob:
        """Run the adjustment on a daemon thread (a dropped tracker does not keep the process alive)."""
        self.thread = threading.Thread(target=self.run, name="mono-bundle-adjustment", daemon=True)
        self.thread.start()
        return self

    def run(self) -> None:
        try:
            self.T, self.X, self.err, self.focal_scale = bundle_adjust(*self.args, **self.options)
        except Exception as e:  # noqa: BLE001 - reported by the tracker when it applies the job
            self.error = f"{type(e).__name__}: {e}"
            logger.debug("background bundle adjustment failed", exc_info=True)
        self.args = ()  # the inputs go with the thread
        self.done = True

    def ready(self) -> bool:
        return self.done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is done (a checkpoint needs its result); False if `timeout` passed first."""
        if self.thread is not None:
            self.thread.join(timeout)
            if self.done:
                self.thread = None  # a finished job is plain data (it may be checkpointed)
        return self.done
