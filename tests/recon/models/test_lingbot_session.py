"""LingBot-Map streaming: the anchor/window/trajectory memory, the session (bounded, resettable, checkpointable), the
windowed session's emission, and the windowed-composition question on synthetic windows with known poses."""

from __future__ import annotations

import logging
from collections import Counter

import msgpack
import pytest
import torch

from recon.errors import ConfigError, StateError
from recon.geometry.pose_encoding import mat_to_quat_xyzw, quat_xyzw_to_mat
from recon.memory.anchor_window import AnchorWindowMemory
from recon.models.lingbot import LingBot, VideoRoPEConfig, tiny_config
from recon.models.lingbot_session import LingBotSession, LingBotStreamConfig
from recon.models.lingbot_windows import (
    LingBotWindowConfig,
    LingBotWindowedSession,
    pairwise_alignment,
    warp_frame,
)
from tests.golden.runners.lingbot import one_thread

P, S = 5, 2  # tokens per frame, of which special


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # noqa: ANN202 - generator fixture
    with one_thread():
        yield


def _frame_kv(fid: int, n_frames: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V of consecutive frames whose every entry holds (frame id * 100 + token index): the attended set is
    readable from the values."""
    ids = torch.cat([fid * 100 + j * 100 + torch.arange(P, dtype=torch.float64) for j in range(n_frames)])
    k = ids.view(1, 1, -1, 1).expand(1, 2, -1, 3).contiguous()
    return k, k.clone()


def _attended(mem: AnchorWindowMemory, frame_ids: list[int], store: bool = True) -> Counter:
    mem.begin_step(frame_ids, P, store=store)
    k, v = _frame_kv(frame_ids[0], len(frame_ids))
    keys, values = mem[0].update(k, v)
    assert torch.equal(keys, values)
    return Counter(int(x) for x in keys[0, 0, :, 0].tolist())


def _expected(full: list[int], specials: list[int]) -> Counter:
    return Counter([f * 100 + j for f in full for j in range(P)] + [f * 100 + j for f in specials for j in range(S)])


def test_memory_keeps_anchors_window_and_trajectory_like_the_reference() -> None:
    mem = AnchorWindowMemory(1, anchor_frames=2, window_frames=3, trajectory_tokens=S, trajectory_frames=0)
    assert _attended(mem, [0, 1]) == _expected([0, 1], [])
    for f in range(2, 9):
        got = _attended(mem, [f])
        window = list(range(max(2, f - 2), f + 1))
        evicted = list(range(2, max(2, f - 2)))
        assert got == _expected([0, 1] + window, evicted), f
        assert mem.cache_frame_ids() == [0, 1] + window
        assert mem.trajectory_frame_ids() == evicted
    # A non-keyframe ("skip") attends to everything plus itself and leaves nothing behind.
    before = (mem.cache_frame_ids(), mem.trajectory_frame_ids(), len(mem[0]))
    assert _attended(mem, [9], store=False) == _expected([0, 1, 6, 7, 8, 9], [2, 3, 4, 5])
    assert (mem.cache_frame_ids(), mem.trajectory_frame_ids(), len(mem[0])) == before
    assert _attended(mem, [10]) == _expected([0, 1, 7, 8, 10], [2, 3, 4, 5, 6])


def test_bounded_trajectory_is_fifo_and_the_storage_is_allocated_once() -> None:
    mem = AnchorWindowMemory(1, anchor_frames=1, window_frames=2, trajectory_tokens=S, trajectory_frames=3)
    _attended(mem, [0])
    capacity = mem[0].capacity
    assert capacity == (1 + 2) * P + 3 * S + P
    for f in range(1, 40):
        got = _attended(mem, [f], store=f % 3 != 0)
        assert mem[0].capacity == capacity
        if f > 8:
            assert len(mem.trajectory_frame_ids()) == 3
            assert sum(got.values()) == (1 + 2 + (f % 3 == 0)) * P + 3 * S
    stored = [f for f in range(1, 40) if f % 3 != 0]
    assert mem.cache_frame_ids() == [0] + stored[-2:]
    assert mem.trajectory_frame_ids() == stored[-5:-2]


def test_multi_frame_store_evicts_within_the_call() -> None:
    mem = AnchorWindowMemory(1, anchor_frames=1, window_frames=2, trajectory_tokens=S, trajectory_frames=0)
    assert _attended(mem, [0, 1, 2, 3, 4]) == _expected([0, 3, 4], [1, 2])
    with pytest.raises(ConfigError):
        mem.begin_step([5, 6], P, store=False)


def test_memory_refuses_other_kv_shapes_until_reset() -> None:
    mem = AnchorWindowMemory(1, anchor_frames=1, window_frames=2, trajectory_tokens=S, trajectory_frames=2)
    _attended(mem, [0])
    mem.begin_step([1], P)
    k, v = _frame_kv(1)
    with pytest.raises(ConfigError, match="reset first"):
        mem[0].update(k.float(), v.float())
    mem.reset()  # a new session may change dtype, batch or heads: fresh storage
    mem.begin_step([0], P)
    keys, _ = mem[0].update(k.float(), v.float())
    assert keys.dtype == torch.float32 and keys.shape[2] == P


def _images(n: int, hw: tuple[int, int] = (28, 42), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(3, hw[0], hw[1] + 4 * n, generator=gen)
    return torch.stack([base[:, :, 4 * i:4 * i + hw[1]] for i in range(n)])


@pytest.fixture(scope="module")
def model() -> LingBot:
    torch.manual_seed(0)
    m = LingBot(tiny_config()).eval()
    with torch.no_grad():  # non-degenerate poses and depth from random weights
        for p in m.parameters():
            if p.dim() == 1 and p.numel() == m.config.embed_dim:
                p.mul_(3)
    return m


SMALL = {"num_scale_frames": 2, "sliding_window": 3, "trajectory_frames": 4, "camera_window": 3}


def _run(session, images: torch.Tensor) -> list[dict]:
    out = []
    for image in images:
        out += session.push(image)
    return out + session.flush()


def test_session_memory_is_bounded_and_reset_reproduces(model: LingBot) -> None:
    session = model.new_session(keyframe_interval=2, **SMALL)
    images = _images(24)
    sizes, tokens = [], []
    frames = []
    for image in images:
        frames += session.push(image)
        sizes.append(session.nbytes())
        tokens.append(session.memory.num_tokens())
    assert [f["frame_index"] for f in frames] == list(range(24))
    assert [f["frame_type"] for f in frames[:5]] == [0, 0, 1, 2, 1]
    # Full after scale (2) + window (3) + trajectory (4) keyframes = frame ~16; constant from then on.
    assert len(set(sizes[1:])) == 1, sizes
    assert len(set(tokens[17:])) == 1 and tokens[17] > tokens[5]
    assert len(session.memory.trajectory_frame_ids()) == 4
    assert session.camera_cache_lengths() == [[2 + 3] * 2] * 4
    assert session.t_next == 2 + 11  # scale frames + keyframes (non-keyframes share the next keyframe's index)
    session.reset()
    again = _run(session, images)
    for a, b in zip(frames, again, strict=True):
        assert torch.equal(a["pose_enc"], b["pose_enc"]) and torch.equal(a["depth"], b["depth"])


def test_state_round_trip_continues_bit_for_bit(model: LingBot) -> None:
    images = _images(14, seed=1)
    cfg = LingBotStreamConfig(keyframe_interval=2, **SMALL)
    reference = _run(LingBotSession(model, cfg), images)
    first = LingBotSession(model, cfg)
    for image in images[:9]:
        first.push(image)
    meta, arrays = first.state()
    msgpack.packb(meta)  # plain data only
    second = LingBotSession(model, cfg)
    second.load_state(meta, arrays)
    rest = _run(second, images[9:])
    assert [f["frame_index"] for f in rest] == list(range(9, 14))
    for a, b in zip(reference[9:], rest, strict=True):
        assert torch.equal(a["pose_enc"], b["pose_enc"]) and torch.equal(a["depth"], b["depth"])
    with pytest.raises(StateError):
        second.load_state({**meta, "version": 99}, arrays)


def test_scale_phase_is_buffered_and_short_streams_flush(model: LingBot) -> None:
    session = model.new_session(num_scale_frames=3, sliding_window=2)
    images = _images(2)
    assert session.push(images[0]) == [] and session.push(images[1]) == []
    assert session.pending_frames == 2
    out = session.flush()
    assert [f["frame_type"] for f in out] == [0, 0] and [f["token_index"] for f in out] == [(0, 0), (1, 0)]


def test_rope_range_warning_once(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    config = tiny_config()
    config.rope3d = VideoRoPEConfig(fhw_dim=(4, 6, 6), max_frame_num=4)
    session = LingBot(config).eval().new_session(num_scale_frames=2, sliding_window=2, trajectory_frames=2,
                                                 camera_window=2)
    with caplog.at_level(logging.WARNING):
        _run(session, _images(8))
    assert sum("max_frame_num" in r.getMessage() for r in caplog.records) == 1
    assert session.t_next == 8


def test_bad_session_options() -> None:
    with pytest.raises(ConfigError, match="keyframe_semantics"):
        LingBotStreamConfig(keyframe_semantics="maybe")
    with pytest.raises(ConfigError, match="sliding_window"):
        LingBotStreamConfig(sliding_window=0)
    with pytest.raises(ConfigError, match="overlap"):
        LingBotWindowConfig(window_size=4, overlap_size=6).frames(2, 1)


# -- windowed ---------------------------------------------------------------------------------------------------


def test_windowed_session_emits_every_frame_once_and_early(model: LingBot) -> None:
    stream = LingBotStreamConfig(keyframe_interval=2, **SMALL)
    windows = LingBotWindowConfig(window_size=4, overlap_keyframes=1)
    session = LingBotWindowedSession(model, stream, windows)
    assert (session.window_frames, session.overlap) == (6, 2)
    images = _images(17, seed=2)
    emitted = []
    for image in images:
        emitted += session.push(image)
    before_flush = len(emitted)
    emitted += session.flush()
    # Windows (0,6) (4,10) (8,14) (12,17), each but the last giving up its last 2 frames.
    assert [f["frame_index"] for f in emitted] == list(range(17))
    assert [f["window"] for f in emitted] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 5
    assert before_flush == 16  # only the tail that a next window would have re-predicted waits for the end
    assert all(torch.isfinite(f["pose_enc"]).all() for f in emitted)


def test_windowed_state_round_trip(model: LingBot) -> None:
    stream = LingBotStreamConfig(**SMALL)
    windows = LingBotWindowConfig(window_size=4)
    images = _images(13, seed=3)
    reference = _run(LingBotWindowedSession(model, stream, windows), images)
    first = LingBotWindowedSession(model, stream, windows)
    got = []
    for image in images[:7]:
        got += first.push(image)
    meta, arrays = first.state()
    msgpack.packb(meta)
    second = LingBotWindowedSession(model, stream, windows)
    second.load_state(meta, arrays)
    got += _run(second, images[7:])
    assert [f["frame_index"] for f in got] == list(range(13))
    for a, b in zip(reference, got, strict=True):
        assert torch.equal(a["pose_enc"], b["pose_enc"]) and torch.equal(a["depth"], b["depth"])


def _random_rotation(gen: torch.Generator) -> torch.Tensor:
    q = torch.randn(4, generator=gen, dtype=torch.float64)
    return quat_xyzw_to_mat(q / q.norm())


def _window_frames(R_wc: list[torch.Tensor], C: list[torch.Tensor], depth: torch.Tensor, sim: tuple, c2w_slots: bool
                   ) -> list[dict]:
    """The cameras expressed in a window's own frame X_win = s R X + t, encoded as the model would (w2c), or with
    the slots the reference's alignment code assumes (centre, c2w quaternion)."""
    s, R, t = sim
    frames = []
    for Rwc, c, d in zip(R_wc, C, depth, strict=True):
        R_win = R @ Rwc
        c_win = s * R @ c + t
        if c2w_slots:
            enc = torch.cat([c_win, mat_to_quat_xyzw(R_win), torch.tensor([1.0, 1.2], dtype=torch.float64)])
        else:
            R_cw = R_win.T
            enc = torch.cat([-(R_cw @ c_win), mat_to_quat_xyzw(R_cw), torch.tensor([1.0, 1.2], dtype=torch.float64)])
        frames.append({"pose_enc": enc[None], "depth": (s * d)[None, ..., None], "is_keyframe": True})
    return frames


def _tail(frames: list[dict]) -> dict:
    return {"pose_enc": torch.stack([f["pose_enc"] for f in frames], dim=1),
            "depth": torch.stack([f["depth"][..., 0] for f in frames], dim=1),
            "is_keyframe": torch.tensor([f["is_keyframe"] for f in frames])}


def _c2w_of(frame: dict, c2w_slots: bool) -> tuple[torch.Tensor, torch.Tensor]:
    enc = frame["pose_enc"][0]
    R = quat_xyzw_to_mat(enc[3:7])
    if c2w_slots:
        return R, enc[:3]
    return R.T, -(R.T @ enc[:3])


@pytest.mark.parametrize("c2w_slots", [False, True])
def test_window_composition_on_synthetic_windows_with_known_poses(c2w_slots: bool) -> None:
    """Window b holds cameras 2..5, window a cameras 0..3, each in its own similarity frame. Mapping b into a must
    put cameras 2..5 where window a (i.e. the truth in a's frame) has them. With world-to-camera encodings (what the
    model predicts) only the `w2c` composition does; the reference's composition is right only for encodings whose
    slots are (centre, camera-to-world quaternion)."""
    gen = torch.Generator().manual_seed(11)
    R_wc = [_random_rotation(gen) for _ in range(6)]
    C = [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(6)]
    depth = 1 + torch.rand(6, 4, 5, generator=gen, dtype=torch.float64)
    sim_a = (1.7, _random_rotation(gen), torch.randn(3, generator=gen, dtype=torch.float64))
    sim_b = (0.6, _random_rotation(gen), torch.randn(3, generator=gen, dtype=torch.float64))
    win_a = _window_frames(R_wc[:4], C[:4], depth[:4], sim_a, c2w_slots)
    win_b = _window_frames(R_wc[2:], C[2:], depth[2:], sim_b, c2w_slots)
    errors = {}
    for alignment in ("w2c", "reference"):
        s, R, t = pairwise_alignment(_tail(win_a[2:]), _tail(win_b[:2]), alignment)
        # The depth-ratio scale does not depend on the composition (float32 in the reference's, float64 in ours).
        assert abs(float(s[0]) - 1.7 / 0.6) < (1e-6 if alignment == "reference" else 1e-12)
        worst = 0.0
        for i, frame in enumerate(win_b):
            warped = warp_frame(frame, s, R, t, alignment)
            R_got, c_got = _c2w_of(warped, c2w_slots)
            s_a, R_a, t_a = sim_a
            R_true, c_true = R_a @ R_wc[i + 2], s_a * R_a @ C[i + 2] + t_a
            worst = max(worst, float((R_got - R_true).abs().max()), float((c_got - c_true).abs().max()))
            want_depth = (1.7 * depth[i + 2])[None, ..., None]
            torch.testing.assert_close(warped["depth"], want_depth, atol=1e-5 if alignment == "reference" else 1e-12,
                                       rtol=0)
        errors[alignment] = worst
    if c2w_slots:
        assert errors["reference"] < 1e-5  # float32 scale
    else:
        assert errors["w2c"] < 1e-9
        assert errors["reference"] > 0.1


def test_gpu_check_code_path_runs_on_the_tiny_model() -> None:
    from recon.commands.bench_lingbot import gpu_check

    report = gpu_check(device="cpu", frames=10, grid=(2, 3), dtype="fp32", repeats=1, model_config="tiny")
    assert report["ours"]["fps_median"] > 0 and report["image_hw"] == [28, 42]
    assert report["ours"]["kv_mb_first"] == report["ours"]["kv_mb_last"] > 0  # allocated once
    assert "not run" in report["reference"]  # the authors' package is not installed here
