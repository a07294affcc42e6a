"""The typed configuration of every built-in backend (one dataclass each, registered with it in recon.backends).

Each field is an option of `--backend NAME`: its type, default, help and allowed values are stated once here, and
`recon replay/live/node recon` build their flags and help from these classes (recon.backends.flags). A
backend's factory takes its config (`create(config)`); `create_backend(name, **options)` builds the config first,
so a misspelt or misplaced option fails with the list of valid ones before any model is loaded. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recon.config import COMPUTE_DTYPE_CHOICES, WEIGHTS_DTYPE_CHOICES, Config, option
from recon.errors import ConfigError

MODEL_CONFIGS = ("full", "tiny")
POINT_SOURCES = ("depth", "head")  # world points: depth unprojected with the predicted pose, or the point head
# Defaults of the infinitevggt memory (InfiniteVGGT as published; recon.memory.policies states them too).
INFINITEVGGT_BUDGET = 1_200_000
INFINITEVGGT_TEMPERATURE = 0.5
INFINITEVGGT_CAMERA_WINDOW = 128


def _check(condition: bool, kind: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{kind}: {message}")


@dataclass
class BackendConfig(Config):
    """Options of one backend; `kind` is "<name> backend" for error messages."""


@dataclass
class LearnedBackendConfig(BackendConfig):
    """What every learned backend takes: which network, where it runs, in which number format."""

    weights: str | None = option(None, "model weights file or registry name (default: the installed copy; "
                                       "`recon weights list` shows them)", flag=True, metavar="FILE")
    model_config: str = option("full", "full (the published model; needs its weights) or tiny (a small model with "
                                       "random weights: tries the pipeline without any download, results are "
                                       "meaningless)", choices=MODEL_CONFIGS, flag=True)
    device: str = option("auto", "where the model runs: auto (a CUDA GPU when there is one, else cpu), cpu, cuda, "
                                 "cuda:1 ...", flag=True, metavar="DEVICE")
    dtype: str = option("auto", "number format the network computes in, the same for every learned backend: auto "
                                "(bf16 on a GPU, fp16 on a GPU without bf16, fp32 on cpu), fp32, bf16, fp16",
                        choices=COMPUTE_DTYPE_CHOICES, flag=True)
    seed: int = option(0, "seed of random weights (model_config tiny or random_init)")
    image_width: int | None = option(None, "model input width in pixels (default: the model's own)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.image_width is None or self.image_width >= 14, self.kind,
               f"image_width must be an integer >= 14, got {self.image_width!r}")


@dataclass
class VGGTFamilyBackendConfig(LearnedBackendConfig):
    """Options shared by the backends running VGGT-family networks (vggt, streamvggt, infinitevggt, lingbot)."""

    random_init: bool = option(False, "random weights at the full size (no download; results are meaningless)")
    points: str = option("depth", "world points from the depth head and the pose, or from the point head",
                         choices=POINT_SOURCES)


@dataclass
class VGGTBackendConfig(VGGTFamilyBackendConfig):
    kind = "vggt backend"

    clip_length: int = option(16, "frames per offline clip")
    overlap: int = option(1, "frames a clip shares with the next (ties the clips to one world frame)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.clip_length >= 2, self.kind, f"clip_length must be >= 2, got {self.clip_length}")
        _check(0 <= self.overlap < self.clip_length, self.kind,
               f"overlap must be in [0, clip_length), got {self.overlap}")


@dataclass
class StreamVGGTBackendConfig(VGGTFamilyBackendConfig):
    kind = "streamvggt backend"

    camera_cache: str = option("reference", "camera-trunk cache layout (recon.models.streaming)")
    capacity: int = option(0, "per-layer preallocated KV storage in tokens (0: grow as needed)")
    policy: Any = option(None, "eviction policy object for the aggregator caches (programmatic use)")
    camera_policy: Any = option(None, "eviction policy object for the camera-trunk caches (programmatic use)")


@dataclass
class InfiniteVGGTBackendConfig(VGGTFamilyBackendConfig):
    kind = "infinitevggt backend"

    camera_cache: str = option("reference", "camera-trunk cache layout (recon.models.streaming)")
    budget: int = option(INFINITEVGGT_BUDGET, "how many tokens the streaming memory keeps, over all layers (default "
                                              "1200000; smaller uses less GPU memory)", flag=True, metavar="TOKENS")
    policy: str = option("infinitevggt", "eviction policy of the aggregator caches",
                         choices=("infinitevggt", "sinks", "window", "unbounded"))
    temperature: float = option(INFINITEVGGT_TEMPERATURE, "softmax temperature of the per-layer budget split")
    camera_window: int | None = option(INFINITEVGGT_CAMERA_WINDOW, "frames kept in the camera-trunk caches besides "
                                                                   "frame 0 (0: unbounded, as published)")
    capacity: int | None = option(None, "per-layer preallocated cache storage in tokens (default: 1.25 x the even "
                                        "per-layer share of the budget)")
    static: bool = option(False, "fixed-shape caches (no host synchronisation; for CUDA graphs / torch.compile)")
    compile: bool | dict = option(False, "static-shape caches and the per-frame step compiled once with "
                                         "torch.compile (CUDA graphs on CUDA); a dict gives torch.compile options",
                                  flag=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.budget >= 1, self.kind, f"budget must be a positive number of tokens, got {self.budget!r}")
        _check(self.camera_window is None or self.camera_window >= 0, self.kind,
               f"camera_window must be >= 0 frames, got {self.camera_window}")


@dataclass
class HorizonStreamBackendConfig(LearnedBackendConfig):
    kind = "horizonstream backend"

    sliding_size: int = option(1, "frames per step after the first window (1 = one result per frame)", flag=True,
                               metavar="N")
    window_size: int | None = option(None, "frames of the first window (default: the model's)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.sliding_size >= 1, self.kind, f"sliding_size must be a positive integer, got {self.sliding_size!r}")


@dataclass
class LaserBackendConfig(LearnedBackendConfig):
    kind = "laser backend"

    backbone: str = option("pi3", "model LASER runs on each window: pi3 or vggt", choices=("pi3", "vggt"), flag=True)
    weights_dtype: str | None = option(None, "storage format of the window model's weights: fp32 (default), bf16, "
                                             "fp16 (half the memory; the network then computes in that format)",
                                       choices=WEIGHTS_DTYPE_CHOICES, flag=True)
    window_size: int = option(20, "frames per window (paper: 20)")
    overlap: int = option(5, "frames a window shares with the next (paper: 5)")
    top_conf_percentile: float = option(0.5, "fraction of the most confident overlap pixels used for alignment")
    depth_refine: bool = option(True, "per-layer depth scale refinement (recon.align.engine)")
    relative_tol: bool = option(False, "relative instead of absolute layer tolerance")
    layer_downsample: int = option(1, "pixel stride of the depth layering")
    overlap_inference: bool = option(True, "predict the next window on a worker thread while aligning this one")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.layer_downsample >= 1, self.kind, f"layer_downsample must be >= 1, got {self.layer_downsample}")

    def backbone_options(self) -> dict[str, Any]:
        """What the window-model builder takes (recon.models.<backbone>.build_window_model)."""
        return {"weights": self.weights, "model_config": self.model_config, "device": self.device,
                "dtype": self.dtype, "weights_dtype": self.weights_dtype, "seed": self.seed}


@dataclass
class LingBotBackendConfig(VGGTFamilyBackendConfig):
    """Options of the `lingbot` backend (recon.backends.lingbot's docstring explains them)."""

    kind = "lingbot backend"

    weights_name: str = option("lingbot-map-long", "registry entry of the weights (lingbot-map-long, lingbot-map)")
    mode: str = option("stream", "stream (one bounded memory) or windowed (overlapping windows joined by Sim(3))",
                       choices=("stream", "windowed"), flag=True)
    keyframe_interval: int = option(1, "keep every N-th frame in memory after the scale frames (1 = all)",
                                    flag=True, metavar="N")
    keyframe_semantics: str = option("skip", "skip (non-keyframes not stored) or store (the reference's fallback)",
                                     choices=("skip", "store"))
    num_scale_frames: int = option(8, "frames predicted together at the start (they fix the scale)")
    anchor_frames: int | None = option(None, "anchor frames kept in memory (default: the scale frames)")
    sliding_window: int = option(64, "last stored frames the aggregator attends to")
    trajectory: str = option("special", "trajectory memory of evicted frames")
    trajectory_frames: int | None = option(None, "bound of the trajectory memory in frames (default: unbounded)")
    camera_window: int | None = option(None, "keyframes kept in the camera-head cache (default: unbounded)")
    window_size: int = option(64, "windowed mode: frames per window")
    overlap_keyframes: int | None = option(None, "windowed mode: keyframes shared by consecutive windows")
    overlap_size: int | None = option(None, "windowed mode: frames shared by consecutive windows")
    window_alignment: str = option("w2c", "windowed mode: how windows are aligned (docs/lingbot.md)",
                                   choices=("w2c", "reference"))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stream_config()
        if self.mode == "windowed":
            self.window_config().frames(self.num_scale_frames, self.keyframe_interval)

    def stream_config(self) -> Any:
        """The session's memory configuration (recon.models.lingbot_session.LingBotStreamConfig validates it)."""
        from recon.models.lingbot_session import LingBotStreamConfig

        return LingBotStreamConfig(
            num_scale_frames=self.num_scale_frames, anchor_frames=self.anchor_frames,
            sliding_window=self.sliding_window, keyframe_interval=self.keyframe_interval,
            keyframe_semantics=self.keyframe_semantics, trajectory=self.trajectory,
            trajectory_frames=self.trajectory_frames, camera_window=self.camera_window)

    def window_config(self) -> Any:
        """The windowed session's configuration (recon.models.lingbot_windows.LingBotWindowConfig)."""
        from recon.models.lingbot_windows import LingBotWindowConfig

        return LingBotWindowConfig(window_size=self.window_size, overlap_keyframes=self.overlap_keyframes,
                                   overlap_size=self.overlap_size, alignment=self.window_alignment)

    def state_key(self) -> dict[str, Any]:
        """The options a saved state depends on (a state is refused by a backend built with other values)."""
        keep = ("weights_name", "model_config", "image_width", "mode", "keyframe_interval", "keyframe_semantics",
                "num_scale_frames", "anchor_frames", "sliding_window", "trajectory", "trajectory_frames",
                "camera_window", "window_size", "overlap_keyframes", "overlap_size", "window_alignment", "points")
        return {k: v for k, v in self.to_options().items() if k in keep}


@dataclass
class GeometricBackendConfig(BackendConfig):
    """Options of the weight-free backend (recon.backends.geometric's docstring explains them)."""

    kind = "geometric backend"

    mode: str = option("auto", "auto (RGB-D when frames carry depth), rgbd, or mono (ignore depth)",
                       choices=("auto", "rgbd", "mono"))
    K: Any = option(None, "3x3 intrinsics for frames that carry none (default: fx = fy = 0.8 max(w, h), centred)")
    stride: int | None = option(None, "keep every stride-th pixel (default: the smallest giving <= max_points)")
    max_points: int | None = option(20000, "points per frame when stride is not given")
    depth_max: float = option(8.0, "metres; RGB-D depth beyond it is ignored")
    mono_points: str = option("dense", "dense (interpolated between map points) or sparse", choices=("dense", "sparse"))
    rgbd: dict | None = option(None, "extra keyword options of RgbdOdometry")
    mono: dict | None = option(None, "extra keyword options of MonoVO")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.stride is None or self.stride >= 1, self.kind, f"stride must be >= 1, got {self.stride!r}")
        _check(self.max_points is None or self.max_points >= 1, self.kind,
               f"max_points must be >= 1, got {self.max_points!r}")
        _check(self.depth_max > 0, self.kind, f"depth_max must be positive, got {self.depth_max!r}")

    def backend_options(self) -> dict[str, Any]:
        return self.to_options()


@dataclass
class IdentityBackendConfig(BackendConfig):
    """Options of the `identity` test backend (poses are identity, optionally drifting; no weights, no model)."""

    kind = "identity backend"

    delay_ms: float = option(0.0, "time each step takes (sleeps), milliseconds")
    points: bool = option(False, "a unit-depth point map per frame, so sinks have geometry to draw")
    window: int = option(0, "results held back (released by flush), like a windowed backend")
    drift: float = option(0.0, "x translation added per frame and carried (state a restart must restore)")
    build_ms: float = option(0.0, "time the construction takes (sleeps), milliseconds")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.delay_ms >= 0 and self.build_ms >= 0, self.kind, "delay_ms and build_ms must be >= 0")
        _check(self.window >= 0, self.kind, f"window must be >= 0, got {self.window}")
