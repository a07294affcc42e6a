"""Streaming sessions of the tiny StreamVGGT: equivalences with the batch pass, quirk A, reset, refusals."""

from __future__ import annotations

import pytest
import torch

from recon.errors import BackendError, ConfigError
from recon.models.vggt import VGGT, filter_track_head, sane_random_init, tiny_config


@pytest.fixture(scope="module")
def model() -> VGGT:
    torch.manual_seed(0)
    m = sane_random_init(VGGT(tiny_config(causal=True)), seed=1)
    with torch.no_grad():  # LayerScale 0.01 would hide attention bugs (reference notes §3.3): make it matter
        for name, p in m.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(0.7)
    return m.double().eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(1, 4, 3, 28, 42, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _stream(model: VGGT, images: torch.Tensor, camera_cache: str) -> list[dict]:
    session = model.new_session(camera_cache=camera_cache)
    return [session.step(images[:, s]) for s in range(images.shape[1])]


def test_per_iteration_stream_equals_block_causal_batch(model: VGGT, images: torch.Tensor) -> None:
    with torch.inference_mode():
        batch = model(images)
    frames = _stream(model, images, "per_iteration")
    for s, f in enumerate(frames):
        for it in range(4):
            torch.testing.assert_close(f["pose_enc_list"][it], batch["pose_enc_list"][it][:, s], atol=1e-10, rtol=0)
        torch.testing.assert_close(f["depth"], batch["depth"][:, s], atol=1e-10, rtol=0)
        torch.testing.assert_close(f["world_points"], batch["world_points"][:, s], atol=1e-10, rtol=0)
        torch.testing.assert_close(f["world_points_conf"], batch["world_points_conf"][:, s], atol=1e-10, rtol=0)


def test_reference_camera_cache_is_quirk_a(model: VGGT, images: torch.Tensor) -> None:
    session = model.new_session(camera_cache="reference")
    periter = _stream(model, images, "per_iteration")
    lengths = []
    ref = []
    for s in range(images.shape[1]):
        ref.append(session.step(images[:, s]))
        lengths.append(session.camera_cache_lengths())
    # One cache per trunk layer shared by all 4 iterations: +4 entries per frame, all rows the same objects.
    assert [row[0] for row in lengths] == [[4, 4], [8, 8], [12, 12], [16, 16]]
    assert session.camera_caches[0] is session.camera_caches[3]
    # Frame 0, iteration 0 is the only pose that agrees with the batch-equal path; dense outputs all agree.
    torch.testing.assert_close(ref[0]["pose_enc_list"][0], periter[0]["pose_enc_list"][0], atol=1e-12, rtol=0)
    assert (ref[0]["pose_enc_list"][1] - periter[0]["pose_enc_list"][1]).abs().max() > 1e-6
    assert (ref[2]["pose_enc"] - periter[2]["pose_enc"]).abs().max() > 1e-6
    torch.testing.assert_close(ref[3]["depth"], periter[3]["depth"], atol=1e-12, rtol=0)


def test_full_attention_differs_from_causal(model: VGGT, images: torch.Tensor) -> None:
    full = VGGT(tiny_config(causal=False)).double().eval()
    full.load_state_dict(model.state_dict())
    with torch.inference_mode():
        a, b = full(images), model(images)
    # Frame 0 sees later frames only with full attention.
    assert (a["depth"][:, 0] - b["depth"][:, 0]).abs().max() > 1e-8
    assert a["depth"].shape == (1, 4, 28, 42, 1) and a["world_points_conf"].shape == (1, 4, 28, 42)


def test_reset_and_independent_sessions(model: VGGT, images: torch.Tensor) -> None:
    one = model.new_session()
    first = one.step(images[:, 0])
    one.step(images[:, 1])
    one.reset()
    assert one.num_frames == 0 and one.memory.num_tokens() == 0
    again = one.step(images[:, 0])
    torch.testing.assert_close(again["pose_enc"], first["pose_enc"], atol=0, rtol=0)
    # Interleaving two sessions on one model gives the same as running them one after the other.
    a, b = model.new_session(), model.new_session()
    out_a, out_b = [], []
    for s in range(3):
        out_a.append(a.step(images[:, s]))
        out_b.append(b.step(images[:, 3 - s]))
    solo = _stream(model, images[:, :3], "reference")
    for x, y in zip(out_a, solo, strict=True):
        torch.testing.assert_close(x["depth"], y["depth"], atol=0, rtol=0)


def test_resolution_change_is_refused(model: VGGT, images: torch.Tensor) -> None:
    session = model.new_session()
    session.step(images[:, 0])
    with pytest.raises(BackendError, match="resolution changed"):
        session.step(images[:, 1, :, :14, :])
    with pytest.raises(BackendError, match="multiple of the patch size"):
        model.new_session().step(images[:, 0, :, :20, :])
    session.reset()
    assert session.step(images[:, 1, :, :14, :])["depth"].shape == (1, 14, 42, 1)
    with pytest.raises(ConfigError):
        model.new_session(camera_cache="bogus")


def test_cache_holds_every_token_and_grows_by_doubling(model: VGGT, images: torch.Tensor) -> None:
    session = model.new_session(track_token_ids=True)
    caps = []
    for s in range(4):
        session.step(images[:, s])
        caps.append(session.memory[0].capacity)
    tokens_per_frame = 5 + 2 * 3
    assert len(session.memory[0]) == 4 * tokens_per_frame
    assert caps == [11, 22, 44, 44]
    assert session.memory[0].token_ids()[0, 0].tolist() == list(range(44))
    assert session.nbytes() > 0


def test_filter_track_head() -> None:
    sd = {"track_head.x": 1, "aggregator.camera_token": 2, "camera_head.trunk.0.ls1.gamma": 3}
    assert filter_track_head(sd) == {"aggregator.camera_token": 2, "camera_head.trunk.0.ls1.gamma": 3}
    assert "track_head.x" in sd  # input untouched


def test_bf16_autocast_caches_half_precision_and_heads_run_fp32() -> None:
    m = sane_random_init(VGGT(tiny_config(causal=True))).eval()
    session = m.new_session()
    x = torch.rand(3, 28, 42, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        session.step(x)
        out = session.step(x)
    assert session.memory[0].keys().dtype == torch.bfloat16 == session.memory[0].values().dtype
    assert out["depth"].dtype == torch.float32 and out["pose_enc"].dtype == torch.float32
    assert torch.isfinite(out["world_points"]).all()


def test_laser_window_model_returns_camera_points_and_c2w_poses() -> None:
    from recon.models.vggt import build_window_model

    wm = build_window_model(model_config="tiny", device="cpu")
    pred = wm.predict_window(torch.rand(3, 3, 28, 42, generator=torch.Generator().manual_seed(1)))
    assert pred.local_points.shape == (3, 28, 42, 3) and pred.camera_poses.shape == (3, 4, 4)
    assert pred.conf.shape == (3, 28, 42)
    # Camera-frame points: z is the depth, and x/z follows the pixel column through K (principal point at centre).
    z = pred.local_points[..., 2]
    assert (z > 0).all()
    assert torch.allclose(pred.local_points[0, :, 21, 0], torch.zeros(28), atol=1e-6)
    assert torch.allclose(pred.camera_poses[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(3, 4))


def test_camera_policy_bounds_the_camera_cache(model: VGGT, images: torch.Tensor) -> None:
    from recon.memory import EvictionPolicy

    class KeepLast(EvictionPolicy):
        name = "keep_last"

        def after_append(self, layer, cache, frame_index) -> None:
            n = len(cache)
            if n > 6:
                cache.compact(torch.arange(n - 6, n).expand(*cache.keys().shape[:2], -1))

    session = model.new_session(camera_policy=KeepLast())
    for s in range(4):
        out = session.step(images[:, s])
    assert session.camera_cache_lengths()[0] == [6, 6]  # unbounded would hold 16 per trunk layer
    assert len(session.memory[0]) == 4 * 11  # the aggregator cache is unaffected
    assert torch.isfinite(out["pose_enc"]).all()
