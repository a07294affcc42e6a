"""Sink collecting camera poses per stream and writing them as TUM trajectories.

A revised pose (`is_update`, same `seq`) replaces the earlier one, so the file holds each frame's final
estimate. Frames without a pose (`tracked=False`) get no row: their pose is a placeholder, not an estimate (an
untracked revision removes the frame's row). Poses are kept in memory (a few hundred bytes per frame) and
written at `close`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from recon.io.trajectory import write_tum_trajectory
from recon.types import FrameResult, Trajectory

logger = logging.getLogger(__name__)


class TrajectoryWriter:
    """Writes `path` for a single stream; with several streams, one file per stream (`<stem>.<stream>.tum`)."""

    name = "trajectory"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._poses: dict[str, dict[int, tuple[int, np.ndarray]]] = {}
        self._closed = False
        self.paths: dict[str, Path] = {}

    def on_result(self, result: FrameResult) -> None:
        poses = self._poses.setdefault(result.stream_id, {})
        if not result.tracked:
            poses.pop(result.seq, None)
            return
        poses[result.seq] = (int(result.t_ns), result.T_world_cam.copy())

    @property
    def stream_ids(self) -> list[str]:
        return list(self._poses)

    def trajectory(self, stream_id: str | None = None) -> Trajectory:
        """Poses of one stream ordered by `seq` (the only stream when None)."""
        if stream_id is None:
            if len(self._poses) > 1:
                raise ValueError(f"several streams {sorted(self._poses)}: name one")
            stream_id = next(iter(self._poses), "")
        by_seq = self._poses.get(stream_id, {})
        seqs = sorted(by_seq)
        t_ns = np.array([by_seq[s][0] for s in seqs], dtype=np.int64)
        T = np.stack([by_seq[s][1] for s in seqs]) if seqs else np.zeros((0, 4, 4))
        return Trajectory(t_ns, T)

    def path_for(self, stream_id: str) -> Path:
        if len(self._poses) <= 1:
            return self.path
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stream_id)
        return self.path.with_name(f"{self.path.stem}.{safe}{self.path.suffix}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        streams = self.stream_ids or [""]
        for stream_id in streams:
            traj = self.trajectory(stream_id)
            path = self.path_for(stream_id)
            tmp = path.with_name(path.name + ".tmp")
            write_tum_trajectory(tmp, traj.t_ns, traj.T_world_cam)
            os.replace(tmp, path)
            self.paths[stream_id] = path
            logger.info("wrote %d poses to %s", len(traj), path)
