"""How checkpoint arrays are written (`recon.checkpoint._write_arrays`): the tensors read back as written, and
writing many states of changing sizes holds no memory (a long-running node checkpoints every session every few
seconds, with KV caches whose sizes change from one checkpoint to the next)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from recon.checkpoint import _write_arrays


def _read(path: Path, framework: str) -> dict:
    with safe_open(str(path), framework=framework) as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__


def test_tensors_read_back_as_written_with_their_dtypes(tmp_path: Path) -> None:
    arrays = {"kv": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
              "ids": torch.tensor([3, 1], dtype=torch.int64), "mask": torch.tensor([True, False]),
              "scalar": torch.tensor(2.5), "np": np.arange(5, dtype=np.float16)}
    framework = _write_arrays(arrays, tmp_path / "a.safetensors", {"k": "v"})
    back = _read(tmp_path / "a.safetensors", framework)
    assert framework == "pt" and set(back) == set(arrays)
    for k, a in arrays.items():
        want = a if isinstance(a, torch.Tensor) else torch.from_numpy(a)
        assert back[k].dtype == want.dtype and back[k].shape == want.shape and torch.equal(back[k], want), k
    bf16 = torch.linspace(0, 1, 7, dtype=torch.bfloat16)
    assert _write_arrays({"h": bf16}, tmp_path / "b.safetensors", {}) == "pt"
    assert torch.equal(_read(tmp_path / "b.safetensors", "pt")["h"], bf16)


def test_writing_states_of_changing_sizes_holds_no_memory(tmp_path: Path) -> None:
    # safetensors.torch makes a ctypes array type per distinct byte size, which ctypes caches forever (~5 KiB each).
    _write_arrays({"kv": torch.zeros(3, 4)}, tmp_path / "w.safetensors", {})
    before = len(ctypes._pointer_type_cache)  # type: ignore[attr-defined]
    for n in range(100, 160):
        _write_arrays({"kv": torch.zeros(n, 4), "ids": torch.arange(n)}, tmp_path / "w.safetensors", {})
    assert len(ctypes._pointer_type_cache) == before  # type: ignore[attr-defined]


def test_numpy_arrays_keep_their_shapes_also_zero_dimensional(tmp_path: Path) -> None:
    """A 0-d array used to come back with shape (1,) (`np.ascontiguousarray` adds a dimension); a transposed one
    must come back as the same values in C order."""
    arrays = {"scalar": np.array(2.5), "matrix": np.arange(6.0).reshape(2, 3).T, "ids": np.arange(4)}
    framework = _write_arrays(arrays, tmp_path / "n.safetensors", {})
    back = _read(tmp_path / "n.safetensors", framework)
    assert framework == "np"
    for k, a in arrays.items():
        assert back[k].shape == a.shape and back[k].dtype == a.dtype, k
        np.testing.assert_array_equal(back[k], a)
