"""Session checkpoints on disk: a backend's streaming state plus the node's bookkeeping, written atomically.

Layout, one folder per stream under the state directory (`recon node recon --state-dir DIR`):

    DIR/<stream id, %-quoted>/manifest.msgpack            the commit point: format, versions, configuration,
                                                          the backend's meta and the node's session record
    DIR/<stream id, %-quoted>/arrays-<generation>.safetensors   every array of the state

A save writes the arrays to a temporary file, fsyncs and renames it, then does the same for the manifest, whose
rename commits the new generation; older array files are removed afterwards. A crash at any point leaves the
previous generation readable. A load checks the format and its version, that the arrays file is the one the
manifest names (generation and size), and that the checkpoint was written by the same backend with the same
options; anything else raises StateError with the reason, so a state is never restored into a backend it does not
fit. The backend itself then checks its own state version and configuration (`Checkpointable.load_state`).

Which backends can be checkpointed: those implementing `recon.backends.base.Checkpointable`, plus the adapters
in `STATE_ADAPTERS` (module with `save_state(backend)` / `load_state(backend, state)`) for backends whose class
does not implement it yet.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from recon.backends.base import BackendState, Checkpointable
from recon.errors import StateError

logger = logging.getLogger(__name__)

FORMAT = "recon-session-checkpoint"
VERSION = 1
"""Version of the checkpoint layout (manifest fields, file names); a reader refuses any other."""

MANIFEST = "manifest.msgpack"
_MAX_MANIFEST_BYTES = 256 * 2**20

STATE_ADAPTERS: dict[str, str] = {"geometric": "recon.backends.geometric.state"}
"""Backend name -> module with `save_state(backend)` / `load_state(backend, state)`, for backends whose class does
not implement `Checkpointable` itself (the geometric backend, until its class calls these)."""


@dataclass
class SessionCheckpoint:
    """What is saved for one stream.

    Attributes:
        stream_id: the stream.
        backend: registry name of the backend the node ran; backend_options: the options it was built with.
        state: the backend's own state.
        session: the node's record of the session (session number, map epoch, owner, processed seqs...).
        created_ns: wall-clock time of the save.
    """

    stream_id: str
    backend: str
    backend_options: dict[str, Any]
    state: BackendState
    session: dict[str, Any] = field(default_factory=dict)
    created_ns: int = 0


def supports_checkpoints(backend: Any) -> bool:
    """True when `backend_state` / `restore_backend_state` work for this backend."""
    inner = getattr(backend, "inner", None)  # recon.map.MappedBackend saves its map beside the inner state
    if inner is not None:
        return supports_checkpoints(inner)
    return isinstance(backend, Checkpointable) or str(getattr(backend, "name", "")) in STATE_ADAPTERS


def _adapter(backend: Any) -> Any:
    name = str(getattr(backend, "name", ""))
    if name not in STATE_ADAPTERS:
        raise StateError(f"backend {name or type(backend).__name__} cannot save its state (not Checkpointable)")
    return importlib.import_module(STATE_ADAPTERS[name])


def backend_state(backend: Any) -> BackendState:
    """The backend's state, through its own `save_state` or its adapter."""
    if isinstance(backend, Checkpointable):
        return backend.save_state()
    return _adapter(backend).save_state(backend)


def restore_backend_state(backend: Any, state: BackendState) -> None:
    """Load `state` into a freshly built backend (StateError when it does not fit)."""
    if state.backend != getattr(backend, "name", None):
        raise StateError(f"state of backend {state.backend!r} cannot be loaded into backend "
                         f"{getattr(backend, 'name', type(backend).__name__)!r}")
    if isinstance(backend, Checkpointable):
        backend.load_state(state)
    else:
        _adapter(backend).load_state(backend, state)


def normalise(value: Any) -> Any:
    """`value` as it reads back from msgpack (tuples become lists), so saved and live configurations compare."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True, default=_plain), raw=False,
                           strict_map_key=False)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) or hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_arrays(arrays: dict[str, Any], path: Path, metadata: dict[str, str]) -> str:
    """Write `arrays` as safetensors; returns the framework needed to read them back ("np", or "pt" when a torch
    tensor is among them: bf16 has no numpy type). A state of numpy arrays never imports torch."""
    torch = sys.modules.get("torch")
    if torch is None or not any(isinstance(a, torch.Tensor) for a in arrays.values()):
        from safetensors.numpy import save_file

        save_file({k: _c_order(a) for k, a in arrays.items()}, str(path), metadata=metadata)
        return "np"
    tensors = {k: (a if isinstance(a, torch.Tensor) else torch.from_numpy(_c_order(a))).cpu().contiguous()
               for k, a in arrays.items()}
    try:
        as_numpy = {k: t.detach().numpy() for k, t in tensors.items()}
    except TypeError:  # a dtype numpy lacks (bfloat16, float8): only safetensors.torch writes it
        from safetensors.torch import save_file as save_torch

        save_torch(tensors, str(path), metadata=metadata)
        return "pt"
    # The same bytes through numpy: safetensors.torch views every tensor through np.ctypeslib.as_array, which makes a
    # ctypes array type per distinct byte size, cached by ctypes for good (~5 KiB each): a long-running node whose
    # KV caches change size leaked memory with every checkpoint. The file format does not depend on the writer;
    # "pt" makes the reader hand back tensors.
    from safetensors.numpy import save_file

    save_file(as_numpy, str(path), metadata=metadata)
    return "pt"


def _c_order(a: Any) -> np.ndarray:
    """`a` in C order, with its shape (`np.ascontiguousarray` turns a 0-d array into shape (1,))."""
    return np.asarray(a, order="C")


class CheckpointStore:
    """Reads and writes the session checkpoints under `root` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def __str__(self) -> str:
        return f"CheckpointStore({self.root})"

    def folder(self, stream_id: str) -> Path:
        return self.root / urllib.parse.quote(stream_id, safe="")

    def exists(self, stream_id: str) -> bool:
        return (self.folder(stream_id) / MANIFEST).is_file()

    def stream_ids(self, max_age_s: float | None = None) -> list[str]:
        """Streams with a committed checkpoint (younger than `max_age_s`), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        now = time.time()
        for folder in self.root.iterdir():
            manifest = folder / MANIFEST
            if not manifest.is_file():
                continue
            age = now - manifest.stat().st_mtime
            if max_age_s is not None and age > max_age_s:
                logger.info("%s: checkpoint of %s is %.0f s old (limit %.0f s): not restored", self,
                            urllib.parse.unquote(folder.name), age, max_age_s)
                continue
            found.append((manifest.stat().st_mtime, urllib.parse.unquote(folder.name)))
        return [sid for _, sid in sorted(found)]

    def save(self, ckpt: SessionCheckpoint) -> Path:
        """Write `ckpt` atomically; returns the manifest path."""
        folder = self.folder(ckpt.stream_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StateError(f"cannot create checkpoint folder {folder}: {e}") from e
        generation = f"{time.time_ns():x}-{secrets.token_hex(4)}"
        arrays_name = f"arrays-{generation}.safetensors"
        tmp_arrays = folder / (arrays_name + ".tmp")
        framework = _write_arrays(ckpt.state.arrays, tmp_arrays, {"format": FORMAT, "generation": generation})
        _fsync_replace(tmp_arrays, folder / arrays_name)
        manifest = {
            "format": FORMAT, "version": VERSION, "generation": generation,
            "created_ns": ckpt.created_ns or time.time_ns(),
            "stream_id": ckpt.stream_id, "backend": ckpt.backend, "backend_options": normalise(ckpt.backend_options),
            "state": {"backend": ckpt.state.backend, "version": ckpt.state.version,
                      "config": normalise(ckpt.state.config), "meta": normalise(ckpt.state.meta)},
            "session": normalise(ckpt.session),
            "arrays": {"file": arrays_name, "bytes": (folder / arrays_name).stat().st_size,
                       "names": sorted(ckpt.state.arrays), "framework": framework},
        }
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_bytes(msgpack.packb(manifest, use_bin_type=True))
        _fsync_replace(tmp, folder / MANIFEST)
        _fsync_dir(folder)
        for old in folder.glob("arrays-*.safetensors*"):
            if old.name != arrays_name:
                old.unlink(missing_ok=True)
        return folder / MANIFEST

    def _manifest(self, stream_id: str) -> dict[str, Any]:
        path = self.folder(stream_id) / MANIFEST
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise StateError(f"no checkpoint for stream {stream_id!r} in {self.root}: {e}") from e
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise StateError(f"{path}: manifest of {len(raw)} bytes is too large")
        try:
            m = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception as e:
            raise StateError(f"{path}: manifest is not valid msgpack: {e}") from e
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise StateError(f"{path}: not a recon session checkpoint")
        if m.get("version") != VERSION:
            raise StateError(f"{path}: checkpoint layout version {m.get('version')} is not this build's version "
                             f"{VERSION}")
        if m.get("stream_id") != stream_id:
            raise StateError(f"{path}: checkpoint is of stream {m.get('stream_id')!r}, not {stream_id!r}")
        return m

    def load_record(self, stream_id: str) -> dict[str, Any]:
        """The node's session record of a checkpoint, from the manifest alone (no arrays are read)."""
        record = self._manifest(stream_id).get("session")
        if not isinstance(record, dict):
            raise StateError(f"checkpoint of stream {stream_id!r} has no session record")
        return record

    def load(self, stream_id: str) -> SessionCheckpoint:
        """The committed checkpoint of `stream_id` (StateError when missing, damaged or of another format)."""
        from safetensors import safe_open

        folder = self.folder(stream_id)
        path = folder / MANIFEST
        m = self._manifest(stream_id)
        arrays_file = folder / str(m["arrays"]["file"])
        try:
            size = arrays_file.stat().st_size
        except OSError as e:
            raise StateError(f"{path}: damaged checkpoint, its arrays file is missing: {e}") from e
        if size != m["arrays"]["bytes"]:
            raise StateError(f"{arrays_file}: damaged checkpoint, {size} bytes instead of {m['arrays']['bytes']}")
        try:
            with safe_open(str(arrays_file), m["arrays"].get("framework", "pt")) as f:
                if (f.metadata() or {}).get("generation") != m["generation"]:
                    raise StateError(f"{arrays_file}: arrays of another generation than the manifest")
                arrays = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        except StateError:
            raise
        except Exception as e:
            raise StateError(f"{arrays_file}: damaged checkpoint: {e}") from e
        if sorted(arrays) != sorted(m["arrays"]["names"]):
            raise StateError(f"{arrays_file}: the arrays do not match the manifest")
        s = m["state"]
        state = BackendState(s["backend"], int(s["version"]), s["config"], arrays, s["meta"])
        return SessionCheckpoint(stream_id, m["backend"], m["backend_options"], state, m["session"],
                                 int(m["created_ns"]))

    def check_backend(self, ckpt: SessionCheckpoint, backend: str, options: dict[str, Any]) -> None:
        """Refuse a checkpoint written by another backend or with other backend options."""
        if ckpt.backend != backend:
            raise StateError(f"checkpoint of stream {ckpt.stream_id!r} was written by backend {ckpt.backend!r}; "
                             f"this node runs {backend!r}")
        if normalise(options) != ckpt.backend_options:
            raise StateError(f"checkpoint of stream {ckpt.stream_id!r} was written with backend options "
                             f"{ckpt.backend_options}; this node runs {normalise(options)}")

    def discard(self, stream_id: str, why: str) -> Path | None:
        """Move a checkpoint that cannot be restored aside (kept for inspection, never retried); returns where."""
        folder = self.folder(stream_id)
        if not folder.exists():
            return None
        target = folder.with_name(f"{folder.name}.rejected-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
        try:
            folder.rename(target)
        except OSError as e:
            logger.error("%s: cannot move the rejected checkpoint of %s aside: %s", self, stream_id, e)
            return None
        logger.warning("%s: checkpoint of stream %s moved to %s (%s)", self, stream_id, target, why)
        return target
