"""A live HorizonStream stream: the published chunk schedule plus online motion averaging after every chunk.

The reference (TooCoolLa/HorizonStream@ddf1333 `horizonstream/core/infer.py`) runs every chunk first and averages the
relative poses of the whole sequence afterwards (../shared/reference/horizonstream.md §3, "Integration caveat");
a live service needs poses as frames arrive. This session therefore:

- buffers frames into the published schedule (README rule 1): the first chunk is exactly `window_size` frames,
  later chunks `sliding_size` frames (1 = per-frame streaming), the last one shorter on `flush`;
- carries the model's constant-size state (rolling Win-1-frame K/V caches, KDA recurrent and short-conv states)
  from chunk to chunk (`HorizonStreamState`), dropping it at the end of the stream;
- feeds each chunk's slot-relative poses (`chunk_cam_map`, translations already metric) to
  `recon.align.motion_averaging.OnlineMotionAveraging` at once, so every frame of the chunk leaves with its
  absolute pose: chunk 0 fixes its Win frames (its last row holds every frame's pose relative to frame Win-1,
  whose camera is therefore the world), each later row fixes one new frame against the Win-1 frames before it;
- applies the metric scale: depth and translations are metric (results say `metric=True`).

Determinism: motion averaging's random starting candidates come from an explicit `torch.Generator` (or replayed
draws, e.g. the fixture's `median_rotation_init_ids`), never from the global generator.

Memory is constant: the pending-frame buffer holds at most max(Win, sliding_size) frames, the model state is fixed
size, and unless `keep_history` the motion-averaging state is trimmed after every chunk to what the next chunk
reads (the last Win-1 fixed poses). `keep_history=True` keeps the per-frame history that the offline camera maps
(`OnlineMotionAveraging.camera_map`, `lag_poses`) need, for tests and audits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from recon.align.motion_averaging import OnlineMotionAveraging
from recon.errors import ConfigError
from recon.models.horizonstream import HorizonStream, HorizonStreamState

logger = logging.getLogger(__name__)


@dataclass
class SessionFrame:
    """One frame whose pose motion averaging has just fixed.

    Attributes:
        index: frame index in the stream (0-based, order of `push`).
        chunk_idx: the chunk that produced it.
        T_cam_world: `[3, 4]` world-to-camera pose (metric translation; world = the camera of the first window's
            last frame, motion averaging's convention).
        fov: `[2]` fields of view (rad), as the encoding's last two values, from the frame's own window slot.
        depth: `[H, W]` metric depth; conf: `[H, W]` confidence (> 1).
        metric_scale: the chunk's predicted metric scale (already applied to depth and translation).
    """

    index: int
    chunk_idx: int
    T_cam_world: torch.Tensor
    fov: torch.Tensor
    depth: torch.Tensor
    conf: torch.Tensor
    metric_scale: float


class HorizonStreamSession:
    """Stream frames through a HorizonStream model; `push` returns the frames fixed by that call.

    Args:
        model: the network (eval mode).
        window_size: Win (default: the model config's).
        sliding_size: frames per chunk after the first (1 = per frame; the paper used 21).
        generator: source of motion averaging's random starts (default: a generator seeded with `seed`).
        seed: seed of the default generator.
        replay_draws: iterator of stored candidate draws (`[1, 10]` each), consumed in order instead.
        keep_history: keep the whole motion-averaging history (camera maps, audits); default trims it.
        autocast_dtype: compute dtype under torch.autocast on any device (`--dtype`; None: the parameters' dtype).
    """

    def __init__(self, model: HorizonStream, *, window_size: int | None = None, sliding_size: int = 1,
                 generator: torch.Generator | None = None, seed: int = 0,
                 replay_draws: Iterator[torch.Tensor] | None = None, keep_history: bool = False,
                 autocast_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.window_size = window_size or model.config.window_size
        if self.window_size < 2:
            raise ConfigError(f"HorizonStreamSession: window_size must be >= 2, got {self.window_size}")
        if sliding_size < 1:
            raise ConfigError(f"HorizonStreamSession: sliding_size must be >= 1, got {sliding_size}")
        self.sliding_size = sliding_size
        self.seed = seed
        self._generator_arg = generator
        self._replay = replay_draws
        self.keep_history = keep_history
        self.autocast_dtype = autocast_dtype
        self.reset()

    def reset(self) -> None:
        """Forget everything: caches, pending frames, poses (a new stream)."""
        self.motion = self._new_motion()
        self.state: HorizonStreamState = self.model.new_state()
        self._pending: list[torch.Tensor] = []
        self.frames_in = 0
        self.frames_out = 0
        self.last_scale: float | None = None

    def _new_motion(self) -> OnlineMotionAveraging:
        gen = self._generator_arg if self._generator_arg is not None else torch.Generator().manual_seed(self.seed)
        return OnlineMotionAveraging(self.window_size, generator=gen, replay_draws=self._replay)

    @property
    def chunk_idx(self) -> int:
        return self.state.chunk_idx

    def _chunk_ready(self) -> bool:
        need = self.window_size if self.state.chunk_idx == 0 else self.sliding_size
        return len(self._pending) >= need

    def push(self, image: torch.Tensor) -> list[SessionFrame]:
        """Add one frame `[3, H, W]` in [0, 1] (model grid, on the model's device); returns newly fixed frames."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ConfigError(f"HorizonStreamSession.push takes one [3,H,W] image, got {tuple(image.shape)}")
        if self._pending and image.shape != self._pending[0].shape:
            raise ConfigError(f"frame size {tuple(image.shape[1:])} differs from the chunk's "
                              f"{tuple(self._pending[0].shape[1:])}")
        self._pending.append(image)
        self.frames_in += 1
        if not self._chunk_ready():
            return []
        return self._run_chunk(len(self._pending))

    def flush(self) -> list[SessionFrame]:
        """End of stream: run what is pending (a shorter last chunk) and drop the carried state (rule 1).

        The next `push` starts a new stream (fresh caches and motion averaging; the finished `motion` object is
        replaced, not cleared, so a caller holding it can still read its history). A stream shorter than one
        window is padded to Win frames by repeating its last frame (the first chunk must be a full window); only
        the real frames are returned.
        """
        out: list[SessionFrame] = []
        if self._pending:
            real = len(self._pending)
            if self.state.chunk_idx == 0:
                logger.info("HorizonStream: stream of %d frames is shorter than the window (%d): padding", real,
                            self.window_size)
                self._pending += [self._pending[-1]] * (self.window_size - real)
            out = self._run_chunk(real)
        self.state = self.model.new_state()
        self.motion = self._new_motion()
        return out

    def _run_chunk(self, real: int) -> list[SessionFrame]:
        images = self._take_chunk()
        with self._compute_context(images):
            out, state = self.model.forward_chunk(images, self.state, self.window_size)
        return self._finish_chunk(out, state, real)

    def _take_chunk(self) -> torch.Tensor:
        images = torch.stack(self._pending)
        self._pending = []
        return images

    def _compute_context(self, images: torch.Tensor) -> ExitStack:
        """Inference mode and, with `autocast_dtype`, autocast; selects the model's kernels for that dtype."""
        dev = images.device
        use_autocast = self.autocast_dtype is not None
        self.model.select_attention(dev, self.autocast_dtype if use_autocast else images.dtype)
        stack = ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch.autocast(dev.type, dtype=self.autocast_dtype) if use_autocast else nullcontext())
        return stack

    def _finish_chunk(self, out: dict[str, torch.Tensor], state: HorizonStreamState, real: int
                      ) -> list[SessionFrame]:
        """Motion averaging and the fixed frames of a chunk the model has run (alone or in a stream batch)."""
        chunk_idx = self.state.chunk_idx
        self.state = state
        first_index = self.frames_out
        cam_map = out["chunk_cam_map"].float()
        poses = self.motion.add_chunk(cam_map.cpu())
        if chunk_idx == 0:
            fovs = cam_map[-1, :, 7:9]  # the last row holds every frame of the window (slot j = frame j)
        else:
            fovs = cam_map[:, -1, 7:9]  # each row's own slot is the last one
        # A model without the metric readout leaves depth and translation in its own units (scale 1).
        scale = float(out["predicted_metric_scale"][0]) if "predicted_metric_scale" in out else 1.0
        self.last_scale = scale
        depth, conf = out["depth"][0, ..., 0].float(), out["depth_conf"][0].float()
        frames = [SessionFrame(first_index + i, chunk_idx, poses[i], fovs[i], depth[i], conf[i], scale)
                  for i in range(real)]
        self.frames_out += real
        if not self.keep_history:
            self._trim_motion()
        logger.debug("HorizonStream chunk %d: %d frames, metric scale %.4f", chunk_idx, real, scale)
        return frames

    def _trim_motion(self) -> None:
        """Keep only what the next `add_chunk` reads (Win-1 fixed poses, the last chained pose)."""
        st, keep = self.motion.state, self.window_size - 1
        del st.online[:-keep]
        del st.last[:-1]
        del st.relative[:-1]
        del st.fovs[:-1]
        del st.draws[:-1]

    def export_state(self) -> dict[str, Any]:
        """The stream's state for a checkpoint: carried model state (K/V, KDA), pending frames, the motion-averaging
        state and its generator, counters. Streams replaying stored draws cannot be saved (an iterator)."""
        from recon.errors import StateError

        if self._replay is not None:
            raise StateError("HorizonStreamSession: a session replaying stored draws cannot be checkpointed")
        return {"state": self.state, "pending": list(self._pending), "frames_in": self.frames_in,
                "frames_out": self.frames_out, "last_scale": self.last_scale, "motion": self.motion.state,
                "generator": self.motion.generator, "window_size": self.window_size,
                "sliding_size": self.sliding_size}

    def import_state(self, state: dict[str, Any]) -> None:
        """Continue from an `export_state` of a session with the same window and sliding sizes."""
        from recon.errors import StateError

        if (state["window_size"], state["sliding_size"]) != (self.window_size, self.sliding_size):
            raise StateError(f"HorizonStreamSession: the state has window/sliding {state['window_size']}/"
                             f"{state['sliding_size']}, this session {self.window_size}/{self.sliding_size}")
        self.reset()
        self.state = state["state"]
        self._pending = list(state["pending"])
        self.frames_in, self.frames_out = int(state["frames_in"]), int(state["frames_out"])
        self.last_scale = state["last_scale"]
        self.motion.state = state["motion"]
        self.motion.generator = state["generator"]

    def nbytes(self) -> int:
        """Bytes held: carried model state, pending frames and motion-averaging tensors."""
        st = self.motion.state
        tensors = [*self._pending, *st.online, *st.last, *st.relative, *st.fovs, *st.draws]
        return self.state.nbytes() + sum(t.numel() * t.element_size() for t in tensors)


def push_batch(sessions: list[HorizonStreamSession], images: list[torch.Tensor]) -> list[list[SessionFrame]]:
    """`session.push(image)` for every session, with the chunks that become ready run in one model call per
    group of streams that may share one (same chunk length and first-chunk phase; recon.models.horizonstream
    `forward_chunk_batch`). Returns what each `push` would have returned."""
    if len(sessions) != len(images) or len({id(s) for s in sessions}) != len(sessions):
        raise ConfigError("push_batch: one frame for each of distinct sessions")
    if len({id(s.model) for s in sessions}) > 1 or len({s.autocast_dtype for s in sessions}) > 1 \
            or len({s.window_size for s in sessions}) > 1:
        raise ConfigError("push_batch: the sessions must share one model, window size and compute dtype")
    results: list[list[SessionFrame]] = [[] for _ in sessions]
    groups: dict[tuple, list[int]] = {}
    for s, image in zip(sessions, images, strict=True):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ConfigError(f"push_batch takes [3,H,W] images, got {tuple(image.shape)}")
        if s._pending and image.shape != s._pending[0].shape:
            raise ConfigError(f"frame size {tuple(image.shape[1:])} differs from the chunk's "
                              f"{tuple(s._pending[0].shape[1:])}")
    for i, (s, image) in enumerate(zip(sessions, images, strict=True)):
        s._pending.append(image)
        s.frames_in += 1
        if s._chunk_ready():
            key = (len(s._pending), s.state.chunk_idx == 0, tuple(image.shape))
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        group = [sessions[i] for i in members]
        chunks = torch.stack([s._take_chunk() for s in group])
        real = chunks.shape[1]
        with group[0]._compute_context(chunks):
            outs, states = group[0].model.forward_chunk_batch(chunks, [s.state for s in group], group[0].window_size)
        for i, s, out, state in zip(members, group, outs, states, strict=True):
            results[i] = s._finish_chunk(out, state, real)
    return results
