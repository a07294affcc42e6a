"""Finding, reading and strictly loading model weights.

Resolution order (DESIGN §5): an explicit path first, then the Hugging Face cache, never the network unless asked
(`recon weights pull NAME`, or `allow_download=True`). With no weights the error names the file expected, every
place looked in and the command that fetches it.

Reading is safe by construction: `.safetensors` through safetensors, anything else through
`torch.load(..., weights_only=True)`. If a pickle needs more than tensors, loading fails with the reason; there is
no silent fallback to unsafe unpickling.

Loading is strict: the checkpoint (after the registry's filter) must have exactly the model's keys and shapes, and
the error lists missing, unexpected and mis-shaped keys.

Example:
    path = resolve_weights("streamvggt", "checkpoints.pth")         # explicit path, else HF cache, else error
    model = load_pretrained("streamvggt", path, dtype="bf16", device="cuda")
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recon.config import COMPUTE_DTYPE_CHOICES
from recon.errors import CheckpointMismatchError, ConfigError, WeightsNotFoundError
from recon.models.registry import WeightsCfg, build_model, get_weights_cfg

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}

# How many key names an error message spells out per category before it only counts.
_MAX_LISTED = 20


# What `--dtype` means, for every learned backend (DESIGN §4: one meaning): the dtype the network computes in.
# "auto" is bf16 on CUDA (fp16 where the GPU has no bf16) and fp32 elsewhere. The weights stay float32 and
# torch.autocast casts per op; storing the weights in another dtype is a separate knob, `weights_dtype`.


def pick_device(device: str | torch.device | None) -> torch.device:
    """Where a model runs: "auto" / None -> cuda when available, else cpu; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compute_dtype(dtype: str | torch.dtype | None, device: torch.device | str,
                  weights_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The compute (autocast) dtype for `--dtype` on `device`.

    Args:
        dtype: "auto" / None, "fp32", "bf16", "fp16" (or a torch dtype).
        device: where the model runs.
        weights_dtype: the parameters' storage dtype. A lower-precision storage dtype is also what the network
            computes in, so "auto" follows it and an explicit fp32 with bf16/fp16 weights is refused.
    """
    device = torch.device(device)
    if dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto"):
        if weights_dtype != torch.float32:
            return weights_dtype
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        chosen = resolve_dtype(dtype)
    except ConfigError as e:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(COMPUTE_DTYPE_CHOICES)}") from e
    if weights_dtype != torch.float32 and chosen != weights_dtype:
        raise ConfigError(f"--dtype {dtype}: the weights are stored in {weights_dtype} (weights_dtype), which is "
                          "what the network computes in; use --dtype auto or the same dtype")
    return chosen


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """"fp32"/"bf16"/"fp16" (or a torch dtype) -> torch dtype; None means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"dtype {dtype} is not supported for weights; use fp32, bf16 or fp16")
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError as e:
        raise ConfigError(f"dtype {dtype!r} is not one of fp32, bf16, fp16") from e


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache in effect now: $HF_HUB_CACHE, else $HF_HOME/hub, else
    ${XDG_CACHE_HOME:-~/.cache}/huggingface/hub (huggingface_hub's own default rule).

    Computed from the environment at call time, never from huggingface_hub's constants: those are fixed when the
    package is first imported, so a cache variable set then (by a test, a wrapper script) would stick for the
    rest of the process. Every lookup and download passes this folder explicitly.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "huggingface" / "hub"


def _cached_file(cfg: WeightsCfg, filename: str, cache_dir: Path) -> Path | None:
    """The cached snapshot of one repo file, or None; never touches the network."""
    if cfg.hf_repo is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(cfg.hf_repo, filename, cache_dir=str(cache_dir))
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    return None


def find_local_weights(name: str, path: str | Path | None = None) -> Path | None:
    """The local weights file for registry entry `name`, or None; no network, no exception for absent files.

    Used by `--backend auto` to decide which backends can run. Checks `path` (if given), then every file of the
    entry in the Hugging Face cache, preferred file first.
    """
    if path is not None:
        p = Path(path).expanduser()
        return p if p.is_file() else None
    try:
        cfg = get_weights_cfg(name)
    except ConfigError:
        logger.warning("no weights entry called %r; treating it as not installed", name)
        return None
    cache = hf_cache_dir()
    for filename in cfg.filenames:
        found = _cached_file(cfg, filename, cache)
        if found is not None:
            return found
    return None


def _not_found(cfg: WeightsCfg, looked: list[str], cause: str = "", fix: str | None = None) -> WeightsNotFoundError:
    """The error users see without weights: the file expected, where we looked, and the fix."""
    expected = " or ".join(cfg.filenames)
    source = f" from Hugging Face {cfg.hf_repo}" if cfg.hf_repo else ""
    if fix is None:
        fix = (f"fetch it with: recon weights pull {cfg.name}" if cfg.hf_repo
               else "pass the file explicitly (this entry has no download source)")
    gated = " (gated repo: accept its access form and set HF_TOKEN first)" if cfg.gated else ""
    why = f" ({cause})" if cause else ""
    return WeightsNotFoundError(
        f"weights {cfg.name!r} not found{why}: expected {expected}{source}; looked in: {'; '.join(looked)}; "
        f"{fix}{gated}, or pass --weights PATH"
    )


def resolve_weights(name: str, path: str | Path | None = None, *, allow_download: bool = False) -> Path:
    """Path of the weights for `name`: explicit `path`, else the HF cache, else download if allowed.

    Raises:
        WeightsNotFoundError: nothing found; names the file expected, where we looked, `recon weights pull NAME`.
    """
    cfg = get_weights_cfg(name)
    looked: list[str] = []
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        if p.is_dir():
            for filename in cfg.filenames:
                if (p / filename).is_file():
                    return p / filename
            looked.append(f"directory {p} (no {' / '.join(cfg.filenames)})")
        else:
            looked.append(f"explicit path {p} (does not exist)")
        # An explicit path that is wrong is an error even when the cache has the file: the user asked for it.
        raise _not_found(cfg, looked)
    cache = hf_cache_dir()
    found = find_local_weights(name)
    if found is not None:
        return found
    looked.append(f"Hugging Face cache {cache}" if cfg.hf_repo else "no cache (entry has no Hugging Face repo)")
    if allow_download and cfg.hf_repo:
        return download_weights(name)
    raise _not_found(cfg, looked)


def download_weights(name: str, filename: str | None = None) -> Path:
    """Download an entry's preferred file (or `filename`) into the HF cache and return its path.

    Raises:
        WeightsNotFoundError: offline, gated without access, or the file is not in the repo; the message says which.
    """
    cfg = get_weights_cfg(name)
    if cfg.hf_repo is None:
        raise _not_found(cfg, ["nowhere: this entry has no Hugging Face repo"])
    filename = filename or cfg.filenames[0]
    if filename not in cfg.filenames:
        raise ConfigError(f"{filename!r} is not a weights file of {name!r} ({', '.join(cfg.filenames)})")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    cache = hf_cache_dir()
    retry = (f"retry `recon weights pull {name}` with network access, or download {filename} from "
             f"https://huggingface.co/{cfg.hf_repo} elsewhere and pass it explicitly")
    logger.info("downloading %s from %s into %s (licence: %s)", filename, cfg.hf_repo, cache, cfg.licence)
    from recon.utils.progress import tqdm_class

    try:
        with _one_line_per_retry(filename):
            return Path(hf_hub_download(cfg.hf_repo, filename, cache_dir=str(cache), tqdm_class=tqdm_class()))
    except GatedRepoError as e:
        raise _not_found(cfg, [f"Hugging Face {cfg.hf_repo}"], "access to the gated repo was refused", retry) from e
    except LocalEntryNotFoundError as e:
        raise _not_found(cfg, [f"Hugging Face cache {cache}"],
                         "offline or Hugging Face unreachable, and not cached", retry) from e
    except (HfHubHTTPError, OSError) as e:
        raise _not_found(cfg, [f"Hugging Face {cfg.hf_repo}"], f"download failed: {e}", retry) from e


_HF_RETRY = re.compile(r"Retrying in (?P<wait>[\d.]+)s \[Retry (?P<n>\d+)/(?P<of>\d+)\]")
_HF_THROWN = re.compile(r"'(?P<error>.*)' thrown while requesting (?P<request>.*)")


class _RetryLines(logging.Filter):
    """Merges huggingface_hub's two records per retry ("'<error>' thrown while requesting <url>", then "Retrying in
    Ns [Retry k/n].") into one line that says what is downloaded, why it failed and when it tries again."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.error: str | None = None
        self.lines = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        thrown = _HF_THROWN.match(message)
        if thrown:
            self.error = f"{thrown['error']} ({thrown['request']})"
            return False  # said with the retry line, or in the error raised after the last attempt
        retry = _HF_RETRY.match(message)
        if retry:
            record.msg = "download of %s failed: %s; retry %s of %s in %s s"
            record.args = (self.what, self.error or "error", retry["n"], retry["of"], retry["wait"])
            self.error = None
            self.lines += 1
        return True


@contextmanager
def _one_line_per_retry(what: str) -> Iterator[_RetryLines]:
    """While downloading: one log line per retry, through recon's logging only. huggingface_hub's package logger has
    a handler of its own and also propagates to ours, so each of its records was printed twice."""
    hub = logging.getLogger("huggingface_hub")
    http = logging.getLogger("huggingface_hub.utils._http")
    merge = _RetryLines(what)
    saved = hub.handlers[:]
    for handler in saved:
        hub.removeHandler(handler)
    http.addFilter(merge)
    try:
        yield merge
    finally:
        http.removeFilter(merge)
        for handler in saved:
            hub.addHandler(handler)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a dict of CPU tensors, safely.

    `.safetensors` via safetensors; anything else via `torch.load(map_location="cpu", weights_only=True)`,
    memory-mapped when the file format allows (zip checkpoints) so a 5 GB file is not copied into RAM twice.
    A pickle that needs arbitrary globals is refused with the reason: recon never unpickles unsafely.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise CheckpointMismatchError(f"{path} is not a readable safetensors file: {e}") from e
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        raise CheckpointMismatchError(
            f"{path} cannot be loaded with weights_only=True: it needs objects beyond tensors ({e}). recon does not "
            f"fall back to unsafe unpickling; convert the file to safetensors in a trusted environment instead"
        ) from e
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointMismatchError(f"{path} is not a readable torch checkpoint: {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj  # type: ignore[return-value]


@dataclass(frozen=True)
class KeyReport:
    """How a (filtered) state dict compares with a model or manifest."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]  # "key: checkpoint AxB vs model CxD"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """Multi-line summary naming up to 20 keys per category (enough to see the pattern, e.g. a prefix)."""
        lines = []
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:_MAX_LISTED])
                more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
                lines.append(f"{len(keys)} {title}: {shown}{more}")
        return "\n".join(lines) if lines else "keys and shapes match"


def compare_keys(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, Any]) -> KeyReport:
    """Compare `got` (name -> tensor or shape) with `expected` (name -> shape)."""
    def shape(v: Any) -> tuple[int, ...]:
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    missing = tuple(sorted(set(expected) - set(got)))
    unexpected = tuple(sorted(set(got) - set(expected)))
    mismatched = tuple(
        f"{k}: checkpoint {'x'.join(map(str, shape(got[k])))} vs model {'x'.join(map(str, expected[k]))}"
        for k in sorted(set(expected) & set(got)) if shape(got[k]) != tuple(expected[k])
    )
    return KeyReport(missing, unexpected, mismatched)


def model_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a model's state dict (works on the meta device)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_into_model(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True,
                    source: str = "checkpoint") -> KeyReport:
    """Copy `state_dict` into `model` (casting to the model's dtypes); strict by default.

    Raises:
        CheckpointMismatchError: strict and keys differ, or any shape differs; lists the keys.
    """
    report = compare_keys(model_shapes(model), state_dict)
    if report.mismatched or (strict and not report.ok):
        raise CheckpointMismatchError(f"{source} does not match {type(model).__name__}:\n{report.describe()}")
    if report.missing:
        logger.info("%s: %d keys missing (non-strict load): %s", source, len(report.missing),
                    ", ".join(report.missing[:_MAX_LISTED]))
    if report.unexpected:
        logger.warning("%s: %d unexpected keys ignored (non-strict load): %s", source, len(report.unexpected),
                       ", ".join(report.unexpected[:_MAX_LISTED]))
    model.load_state_dict(dict(state_dict), strict=strict)
    return report


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks (checkpoints are GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")
_init_lock = threading.Lock()


@contextmanager
def _without_random_init() -> Iterator[None]:
    """Make `torch.nn.init` fills no-ops while a model is built for a strict load.

    Random initialisation of a 1.2 B-parameter model costs tens of seconds on a CPU and is thrown away by the
    load. A strict load overwrites every parameter and persistent buffer, so skipping the fills is unobservable;
    non-persistent buffers (constants such as the ImageNet mean) are computed without `nn.init` and stay correct.
    Building on the meta device instead would lose those constants. The previous functions are restored on exit,
    and a lock keeps two loads from interleaving their patches.
    """
    def skip(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    with _init_lock:
        saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
        try:
            for name in saved:
                setattr(nn.init, name, skip)
            yield
        finally:
            for name, fn in saved.items():
                setattr(nn.init, name, fn)


def load_pretrained(name: str, path: str | Path | None = None, *, device: torch.device | str | None = None,
                    dtype: str | torch.dtype | None = None, strict: bool = True,
                    allow_download: bool = False) -> nn.Module:
    """Build entry `name`'s model, load its weights strictly, cast to `dtype` (fp32/bf16/fp16), move to `device`.

    The model is built in float32 on the CPU (without random init when strict, see `_without_random_init`),
    loaded, then cast and moved: checkpoints are float32 and a cast after loading rounds once, the same way for
    every source file.
    """
    cfg = get_weights_cfg(name)
    target_dtype = resolve_dtype(dtype)
    weights_path = resolve_weights(name, path, allow_download=allow_download)
    logger.info("loading %s weights from %s (licence: %s)", name, weights_path, cfg.licence)
    state_dict = cfg.filter_fn(load_state_dict_file(weights_path))
    with _without_random_init() if strict else nullcontext():
        model = build_model(cfg)
    load_into_model(model, state_dict, strict=strict, source=str(weights_path))
    del state_dict
    model.to(device=device, dtype=target_dtype)
    return model.eval()


def read_manifest(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape from a manifest TSV (`key<TAB>AxBxC<TAB>dtype[<TAB>numel]`, one header line, maybe '# ...')."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in Path(path).read_text().splitlines()[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")[:2]
        shapes[key] = tuple(int(s) for s in shape.split("x")) if shape else ()
    return shapes


def checkpoint_tensors_lazy(path: str | Path) -> dict[str, torch.Tensor]:
    """Key -> tensor of a checkpoint without reading the data where possible.

    safetensors: meta-device placeholders built from the header (shape and dtype only, no I/O of the GBs);
    torch files: the memory-mapped tensors of `load_state_dict_file`. Either can go through an entry's filter.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        return load_state_dict_file(path)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                sl = f.get_slice(key)
                out[key] = torch.empty(tuple(sl.get_shape()), dtype=_SAFETENSORS_DTYPES.get(sl.get_dtype(),
                                       torch.float32), device="meta")
            return out
    except (SafetensorError, OSError) as e:
        raise CheckpointMismatchError(f"{path} is not a readable safetensors file: {e}") from e


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def verify_weights(name: str, path: str | Path | None = None, *, full_load: bool = False) -> tuple[KeyReport, str]:
    """Check a local weights file against the model: keys and shapes (model built on meta), sha256 when recorded.

    With `full_load` the weights are also loaded strictly into a real CPU model (needs the memory of the model).

    Returns:
        (report, message) where message describes the checksum outcome.
    Raises:
        WeightsNotFoundError, CheckpointMismatchError (keys/shapes or sha256 differ).
    """
    cfg = get_weights_cfg(name)
    weights_path = resolve_weights(name, path)
    filtered = cfg.filter_fn(checkpoint_tensors_lazy(weights_path))
    model = build_model(cfg, device="meta")
    report = compare_keys(model_shapes(model), filtered)
    if not report.ok:
        raise CheckpointMismatchError(f"{weights_path} does not match {name}:\n{report.describe()}")
    expected_sha = cfg.sha256.get(weights_path.name)
    if expected_sha:
        digest = sha256_file(weights_path)
        if digest != expected_sha:
            raise CheckpointMismatchError(f"{weights_path}: sha256 {digest} differs from the recorded {expected_sha}")
        checksum = f"sha256 matches ({digest[:12]}...)"
    else:
        checksum = "no sha256 recorded for this file"
    if full_load:
        load_into_model(build_model(cfg), cfg.filter_fn(load_state_dict_file(weights_path)), source=str(weights_path))
    return report, checksum
