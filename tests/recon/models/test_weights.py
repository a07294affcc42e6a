"""Weights: resolution order, the Hugging Face cache, safe reading, strict loading errors, dtypes, the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from recon.cli import main as cli_main
from recon.errors import CheckpointMismatchError, ConfigError, WeightsNotFoundError
from recon.models import registry, weights
from recon.models.registry import build_model, filter_vggt_checkpoint, get_weights_cfg
from tests.conftest import golden_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache in tmp_path, selected through $HF_HUB_CACHE as a user would."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _put_in_cache(cache: Path, repo: str, filename: str, payload: bytes = b"x") -> Path:
    """Lay a file out the way huggingface_hub caches it: refs/main -> snapshots/<commit>/<file>."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    target = root / "snapshots" / COMMIT / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(payload)
    return target


@pytest.fixture(scope="module")
def tiny_state_dict() -> dict[str, torch.Tensor]:
    """The golden fixtures' tiny VGGT weights (official key names), or the tiny model's own when absent."""
    path = golden_dir() / "vggt_tiny" / "weights.safetensors"
    if path.is_file():
        return weights.load_state_dict_file(path)
    torch.manual_seed(0)
    return build_model("vggt-tiny").state_dict()


def test_cache_lookup_and_resolution_order(hf_cache: Path, tmp_path: Path) -> None:
    assert weights.find_local_weights("streamvggt") is None
    cached = _put_in_cache(hf_cache, "lch01/StreamVGGT", "checkpoints.pth")
    assert weights.find_local_weights("streamvggt") == cached
    assert weights.resolve_weights("streamvggt") == cached
    # An explicit file wins over the cache; a folder is searched for the entry's file names.
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"y")
    assert weights.resolve_weights("streamvggt", explicit) == explicit
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "checkpoints.pth").write_bytes(b"z")
    assert weights.resolve_weights("streamvggt", folder) == folder / "checkpoints.pth"
    # A wrong explicit path is an error even though the cache has the file: the user asked for that file.
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        weights.resolve_weights("streamvggt", tmp_path / "typo.pth")


def test_cache_prefers_the_first_listed_file(hf_cache: Path) -> None:
    pt = _put_in_cache(hf_cache, "facebook/VGGT-1B", "model.pt")
    assert weights.find_local_weights("vggt-1b") == pt
    st = _put_in_cache(hf_cache, "facebook/VGGT-1B", "model.safetensors")
    assert weights.find_local_weights("vggt-1b") == st
    assert weights.find_local_weights("no-such-model") is None


def test_missing_weights_message(hf_cache: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        weights.resolve_weights("streamvggt")
    text = str(info.value)
    assert "checkpoints.pth" in text and "lch01/StreamVGGT" in text
    assert str(hf_cache) in text
    assert "recon weights pull streamvggt" in text
    with pytest.raises(WeightsNotFoundError, match="gated"):
        weights.resolve_weights("vggt-1b-commercial")


def test_pull_offline_fails_clearly(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args: object, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsNotFoundError, match="offline") as info:
        weights.download_weights("pi3")
    assert "model.safetensors" in str(info.value) and "huggingface.co/yyfz233/Pi3" in str(info.value)
    assert cli_main(["weights", "pull", "pi3"]) == 1


def test_safe_reading(tmp_path: Path) -> None:
    sd = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    torch.save(sd, tmp_path / "plain.pth")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file(sd, str(tmp_path / "st.safetensors"))
    for name in ("plain.pth", "legacy.pth", "st.safetensors"):
        got = weights.load_state_dict_file(tmp_path / name)
        assert set(got) == {"a", "b"} and torch.equal(got["a"], sd["a"]) and got["b"].dtype == torch.bfloat16

    torch.save({"a": torch.zeros(1), "cfg": _Arbitrary()}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointMismatchError, match="weights_only=True"):
        weights.load_state_dict_file(tmp_path / "pickle.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointMismatchError, match="safetensors"):
        weights.load_state_dict_file(tmp_path / "junk.safetensors")
    with pytest.raises(WeightsNotFoundError):
        weights.load_state_dict_file(tmp_path / "absent.pth")


@dataclasses.dataclass
class _Arbitrary:
    """An object a weights_only unpickler must refuse."""

    value: int = 1


def test_checkpoint_filter() -> None:
    t = torch.zeros(1)
    raw = {"module.aggregator.x": t, "_orig_mod.camera_head.y": t, "module._orig_mod.depth_head.z": t,
           "track_head.w": t, "module.track_head.v": t}
    assert set(filter_vggt_checkpoint(raw)) == {"aggregator.x", "camera_head.y", "depth_head.z"}
    assert set(filter_vggt_checkpoint({"model": {"module.a": t}, "optimizer": {}})) == {"a"}
    # A real parameter named like a container key stays a parameter.
    assert set(registry.unwrap_checkpoint({"model": t, "other": t})) == {"model", "other"}


def test_strict_loading_lists_missing_unexpected_and_mismatched(tiny_state_dict: dict) -> None:
    model = build_model("vggt-tiny")
    report = weights.load_into_model(model, filter_vggt_checkpoint(tiny_state_dict))
    assert report.ok
    first = next(iter(tiny_state_dict))
    bad = dict(tiny_state_dict)
    del bad[first]
    bad["aggregator.not_a_weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as info:
        weights.load_into_model(build_model("vggt-tiny"), bad, source="bad.pth")
    text = str(info.value)
    assert "1 missing" in text and first in text
    assert "1 unexpected" in text and "aggregator.not_a_weight" in text
    reshaped = dict(tiny_state_dict)
    reshaped[first] = torch.zeros(tuple(reshaped[first].shape) + (2,))
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        weights.load_into_model(build_model("vggt-tiny"), reshaped, strict=False)
    # Non-strict loads tolerate (and report) missing keys, never shape errors.
    partial = dict(tiny_state_dict)
    del partial[first]
    assert weights.load_into_model(build_model("vggt-tiny"), partial, strict=False).missing == (first,)


def test_load_pretrained_dtypes(tmp_path: Path, tiny_state_dict: dict) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in tiny_state_dict.items()}, str(path))
    for spec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        model = weights.load_pretrained("vggt-tiny", path, dtype=spec)
        params = dict(model.named_parameters())
        assert all(p.dtype == dtype for p in params.values())
        k = next(iter(tiny_state_dict))
        torch.testing.assert_close(params[k].float(), tiny_state_dict[k].to(dtype).float())
        assert not model.training and model.weights_cfg.name == "vggt-tiny"
    # Loading skips random init (a strict load overwrites every parameter): the fills come back afterwards, and
    # constants that are not in the state dict (non-persistent buffers) are intact.
    init_before = torch.nn.init.trunc_normal_
    model = weights.load_pretrained("vggt-tiny", path)
    assert torch.nn.init.trunc_normal_ is init_before
    reference = build_model("vggt-tiny")
    for key, buf in reference.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[key], buf)
    for key, param in model.named_parameters():
        assert torch.equal(param, tiny_state_dict[key]), key
    assert weights.resolve_dtype(torch.bfloat16) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp32, bf16, fp16"):
        weights.resolve_dtype("int8")
    with pytest.raises(WeightsNotFoundError, match="no download source"):
        weights.load_pretrained("vggt-tiny")


def test_verify_checks_keys_and_sha256(tmp_path: Path, tiny_state_dict: dict,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state_dict.items()}, str(path))
    report, checksum = weights.verify_weights("vggt-tiny", path)
    assert report.ok and "no sha256" in checksum
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = dataclasses.replace(get_weights_cfg("vggt-tiny"), name="vggt-tiny-sha", sha256={path.name: digest})
    monkeypatch.setitem(registry._REGISTRY, entry.name, entry)
    assert "matches" in weights.verify_weights("vggt-tiny-sha", path, full_load=True)[1]
    wrong = dataclasses.replace(entry, name="vggt-tiny-badsha", sha256={path.name: "0" * 64})
    monkeypatch.setitem(registry._REGISTRY, wrong.name, wrong)
    with pytest.raises(CheckpointMismatchError, match="sha256"):
        weights.verify_weights("vggt-tiny-badsha", path)
    # A checkpoint of the other architecture size fails on keys/shapes before any data is read.
    other = {k: v for k, v in tiny_state_dict.items() if not k.startswith("point_head.")}
    save_file(other, str(tmp_path / "nopoint.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="missing"):
        weights.verify_weights("vggt-tiny", tmp_path / "nopoint.safetensors")


def test_cli_list_and_verify(hf_cache: Path, tmp_path: Path, tiny_state_dict: dict,
                             capsys: pytest.CaptureFixture[str]) -> None:
    cached = _put_in_cache(hf_cache, "lch01/StreamVGGT", "checkpoints.pth")
    assert cli_main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert f"installed: {cached}" in out and "CC BY-NC-SA 4.0" in out and "NON-COMMERCIAL" in out
    assert "vggt-1b-commercial" in out and "(gated)" in out and "vggt-tiny" not in out
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state_dict.items()}, str(path))
    assert cli_main(["weights", "verify", "vggt-tiny", "--weights", str(path)]) == 0
    assert "keys and shapes match" in capsys.readouterr().out
    assert cli_main(["weights", "verify", "streamvggt"]) == 1  # the cached file is not a checkpoint


def test_cache_dir_does_not_stick_after_the_variable_is_removed(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """huggingface_hub fixes its constants at import; our lookup must follow the environment of the moment."""
    from recon.models.weights import hf_cache_dir

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "a"))
    import huggingface_hub  # noqa: F401 - imported while the variable is set

    assert hf_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
