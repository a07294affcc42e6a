"""`identity`: a do-nothing backend for node tests and transport benchmarks, where the model is not the point.

It answers every frame at once with a pose that encodes the frame's `seq` (translation x = seq * 1 cm),
so tests can check ordering and exactly-once delivery from the output alone. Optional `delay_ms`
simulates a slow model; `build_ms` a slow construction (loading weights); `points` adds a unit-depth point map
so sinks have geometry to draw; `window` holds that many results back and releases them in `flush`, like a
windowed backend that emits late; `drift` adds a translation carried from frame to frame (state that a restart
must restore: x = seq cm + drift * frames seen in the session).
"""

from __future__ import annotations

import time

import numpy as np

from recon.backends import snapshot
from recon.backends.base import BackendState
from recon.backends.configs import IdentityBackendConfig
from recon.errors import BackendError
from recon.geometry.camera import depth_to_world_points
from recon.types import BackendStats, Frame, FrameResult


def default_K(width: int, height: int) -> np.ndarray:
    """A plausible pinhole for frames without intrinsics (focal = image width)."""
    return np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], dtype=np.float64)


_EYE4 = np.eye(4)


class IdentityBackend:
    """Answers each frame immediately; keeps only counters (and the held results, and the drift)."""

    name = "identity"
    STATE_VERSION = 1

    def __init__(self, delay_ms: float = 0.0, points: bool = False, window: int = 0, drift: float = 0.0) -> None:
        self.delay_s = float(delay_ms) / 1000.0
        self.points = bool(points)
        self.window = int(window)
        self.drift = float(drift)
        self._held: list[FrameResult] = []
        self._stats = BackendStats()
        self._offset = 0.0
        self._size: tuple[int, int] | None = None
        self._K: np.ndarray | None = None  # default_K of the session's size (built once: the step is per frame)

    def reset(self) -> None:
        self._stats = BackendStats()
        self._held = []
        self._offset = 0.0
        self._size = None
        self._K = None

    def _config(self) -> dict[str, object]:
        return {"points": self.points, "window": self.window, "drift": self.drift}

    def save_state(self) -> BackendState:
        return snapshot.to_state(self.name, self.STATE_VERSION, self._config(),
                                 {"held": self._held, "offset": self._offset, "frames_in": self._stats.frames_in,
                                  "results_out": self._stats.results_out})

    def load_state(self, state: BackendState) -> None:
        values = snapshot.from_state(state, self.name, self.STATE_VERSION, self._config())
        self._held, self._offset = values["held"], float(values["offset"])
        self._stats = BackendStats(frames_in=int(values["frames_in"]), results_out=int(values["results_out"]))

    def step(self, frame: Frame) -> list[FrameResult]:
        if self._size is not None and self._size != (frame.height, frame.width):
            raise BackendError(f"identity backend: frame {frame.seq} is {frame.height}x{frame.width}, the session "
                               f"{self._size[0]}x{self._size[1]}; call reset() before changing resolution")
        self._size = (frame.height, frame.width)
        if self.delay_s:
            time.sleep(self.delay_s)
        self._stats.frames_in += 1
        self._offset += self.drift
        T = _EYE4.copy()
        T[0, 3] = 0.01 * frame.seq + self._offset
        if frame.K is not None:
            K = frame.K
        else:
            if self._K is None:
                self._K = default_K(frame.width, frame.height)
            K = self._K.copy()
        pts = depth = None
        if self.points:
            depth = np.ones((frame.height, frame.width), np.float32)
            pts = depth_to_world_points(depth, K, T)
        self._held.append(FrameResult(frame.stream_id, frame.seq, frame.t_ns, T, K, depth=depth, points_world=pts,
                                      image=frame.image if self.points else None))
        cut = max(0, len(self._held) - self.window)
        out, self._held = self._held[:cut], self._held[cut:]
        self._stats.results_out += len(out)
        return out

    def flush(self) -> list[FrameResult]:
        out, self._held = self._held, []
        self._stats.results_out += len(out)
        return out

    def stats(self) -> BackendStats:
        return self._stats


def create(config: IdentityBackendConfig) -> IdentityBackend:
    """Registry factory; options: recon.backends.configs.IdentityBackendConfig (`build_ms`: construction time)."""
    if config.build_ms:
        time.sleep(float(config.build_ms) / 1000.0)
    return IdentityBackend(delay_ms=config.delay_ms, points=config.points, window=config.window, drift=config.drift)
