"""Sensor degradations for the synthetic renderer: a Kinect-style depth model and a consumer colour camera.

Why: a tracker tuned on clean renders fails on real footage for reasons the renders lack, so each degradation
below is one of those reasons, modelled after a published sensor characterisation where one exists:

- Depth noise: axial standard deviation of a structured-light Kinect, Nguyen, Izadi & Lovell (3DIMPVT 2012),
  sigma_z(z, theta) = 0.0012 + 0.0019 (z - 0.4)^2 + 0.0001 / sqrt(z) * theta^2 / (pi/2 - theta)^2 metres,
  i.e. growing with z^2 and exploding at grazing incidence theta. Half of the variance is spatially correlated
  (a coarse random field, like the Kinect's 9x9 correlation window smearing errors over neighbours), half per pixel.
- Depth quantisation: the Kinect measures disparity in 1/8 pixel steps with a 7.5 cm baseline and a 580 px
  focal length, so depth comes in steps of z^2 / (8 * 0.075 * 580) (about 1.1 cm at 2 m), as in Khoshelham &
  Elberink (Sensors 2012).
- Depth holes: no return beyond the working range (0.5-5 m, fading out to 6 m), at grazing incidence (above
  ~70 degrees), in a one-to-two pixel band along depth discontinuities (the projector's shadow and mixed
  pixels), and in small random blobs (specular or dark surfaces).
- Motion blur: the image integrates over the exposure while the camera moves; the blur of each pixel follows
  its own image motion (from depth and the camera poses over the shutter interval), not a global kernel.
- Auto exposure and white balance: a smooth per-frame gain and per-channel gains drifting over seconds,
  applied in linear light, with highlights clipping.
- Sensor noise: shot plus read noise, sigma = s * sqrt(1 + I / 64) in 8-bit units.
- JPEG artefacts: an encode/decode round trip at the given quality (blocking, ringing, chroma loss).

Everything is a pure function of (seed, frame index) through `frame_rng`, so frames are identical whatever
order they are made in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from recon.errors import ConfigError

KINECT_BASELINE_M = 0.075
KINECT_FOCAL_PX = 580.0
KINECT_SUBPIXEL = 8.0
KINECT_RANGE_M = (0.5, 5.0)  # certain return inside; none beyond 6 m


@dataclass(frozen=True)
class Degradations:
    """Which degradations a synthetic sequence gets, and how strong (zero / False: off).

    Attributes:
        depth_noise: multiplier of the Kinect axial noise model (1 = a Kinect).
        depth_quantise: round depth to the Kinect's disparity steps.
        depth_holes: drop depth out of range, at grazing incidence, along edges and in random blobs.
        motion_blur: exposure time as a fraction of the frame interval (0.5 = 1/60 s at 30 frames/s).
        exposure: standard deviation of the log gain of the auto exposure (0.15 = about +-15 %).
        white_balance: standard deviation of the log gain of each colour channel.
        sensor_noise: read noise in 8-bit units (shot noise scales with it).
        jpeg_quality: quality of a JPEG round trip of each colour image (0 = none).
        speed: camera motion per frame as a multiple of the trajectory's hand-held speed (fast motion: 3-5).
    """

    depth_noise: float = 0.0
    depth_quantise: bool = False
    depth_holes: bool = False
    motion_blur: float = 0.0
    exposure: float = 0.0
    white_balance: float = 0.0
    sensor_noise: float = 0.0
    jpeg_quality: int = 0
    speed: float = 1.0

    def __post_init__(self) -> None:
        for name in ("depth_noise", "motion_blur", "exposure", "white_balance", "sensor_noise"):
            if getattr(self, name) < 0:
                raise ConfigError(f"degradation {name} must be >= 0, got {getattr(self, name)}")
        if self.motion_blur > 1.0:
            raise ConfigError(f"motion_blur is the exposure as a fraction of the frame interval (<= 1), "
                              f"got {self.motion_blur}")
        if not (self.jpeg_quality == 0 or 1 <= self.jpeg_quality <= 100):
            raise ConfigError(f"jpeg_quality must be 0 (off) or 1-100, got {self.jpeg_quality}")
        if self.speed <= 0:
            raise ConfigError(f"speed must be positive, got {self.speed}")

    @classmethod
    def realistic(cls, **overrides: Any) -> Degradations:
        """A hand-held Kinect-class RGB-D camera indoors (the `--realistic` preset); fields can be overridden."""
        base = dict(depth_noise=1.0, depth_quantise=True, depth_holes=True, motion_blur=0.5, exposure=0.15,
                    white_balance=0.05, sensor_noise=2.0, jpeg_quality=80)
        base.update(overrides)
        return cls(**base)

    @property
    def any_colour(self) -> bool:
        return bool(self.motion_blur or self.exposure or self.white_balance or self.sensor_noise or self.jpeg_quality)

    @property
    def any_depth(self) -> bool:
        return bool(self.depth_noise or self.depth_quantise or self.depth_holes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def frame_rng(seed: int, index: int, salt: int) -> np.random.Generator:
    """Random stream of one degradation of one frame: independent of the order frames are made in."""
    return np.random.default_rng([seed & 0xFFFFFFFF, 0x5EED_DE6, index, salt])


def _coarse_field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """A smooth zero-mean unit-variance random field with correlation length about `cell` pixels."""
    h, w = shape
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return field / max(float(field.std()), 1e-6)


def kinect_sigma(z: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Axial noise std (metres) at depth z (metres) and incidence angle theta (radians), Nguyen et al. 2012."""
    theta = np.minimum(theta, math.radians(85.0))
    return 0.0012 + 0.0019 * (z - 0.4) ** 2 + 0.0001 / np.sqrt(np.maximum(z, 1e-3)) * theta**2 / (
        math.pi / 2 - theta) ** 2


def quantise_kinect(depth: np.ndarray) -> np.ndarray:
    """Depth rounded to the Kinect's 1/8-pixel disparity steps (zeros stay zero)."""
    bf = KINECT_BASELINE_M * KINECT_FOCAL_PX
    valid = depth > 0
    disp = np.where(valid, bf / np.where(valid, depth, 1.0), 0.0)
    disp_q = np.round(disp * KINECT_SUBPIXEL) / KINECT_SUBPIXEL
    return np.where(valid & (disp_q > 0), bf / np.maximum(disp_q, 1e-9), 0.0).astype(np.float32)


def depth_holes(depth: np.ndarray, cos_incidence: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mask of pixels that keep their depth (True) under the Kinect's failure modes (see the module docstring)."""
    from scipy.special import ndtr

    h, w = depth.shape
    # Uniform variates correlated over a few pixels: dropouts come in patches, as on a real sensor.
    u = ndtr(0.8 * _coarse_field(rng, (h, w), 4) + 0.6 * rng.standard_normal((h, w)))
    lo, hi = KINECT_RANGE_M
    # Range: certain return from 0.5 to 5 m, fading out to none at 6 m.
    p_keep = np.clip(hi + 1.0 - depth, 0.0, 1.0) * (depth >= lo)
    # Incidence: fine up to 60 degrees, gone beyond 78 (cos 0.5 -> 0.2).
    p_keep = p_keep * np.clip((cos_incidence - 0.2) / 0.3, 0.0, 1.0)
    keep = u < p_keep
    # Discontinuities: a relative jump of over 4 % in a 3x3 neighbourhood, widened by a pixel, loses depth with
    # probability 0.85 (so edges are ragged, as real ones are).
    kernel = np.ones((3, 3), np.uint8)
    dmax, dmin = cv2.dilate(depth, kernel), cv2.erode(depth, kernel)
    edge = (dmax - dmin) > 0.04 * np.maximum(dmax, 1e-3)
    edge = cv2.dilate(edge.astype(np.uint8), kernel).astype(bool)
    keep &= ~(edge & (rng.random((h, w)) < 0.85))
    # Blobs: about 1.5 % of the image in clusters a few pixels wide.
    blobs = _coarse_field(rng, (h, w), max(3, w // 60)) > 2.17
    keep &= ~blobs
    return keep


def degrade_depth(depth: np.ndarray, cos_incidence: np.ndarray, d: Degradations, seed: int, index: int
                  ) -> np.ndarray:
    """Depth (metres, 0 = missing) as a Kinect-class sensor would report the clean `depth`."""
    out = depth.astype(np.float32).copy()
    valid = out > 0
    if d.depth_noise:
        rng = frame_rng(seed, index, 1)
        theta = np.arccos(np.clip(cos_incidence, 0.0, 1.0))
        sigma = d.depth_noise * kinect_sigma(out, theta)
        h, w = out.shape
        noise = (_coarse_field(rng, (h, w), 9) + rng.standard_normal((h, w)).astype(np.float32)) / math.sqrt(2.0)
        out = np.where(valid, out + sigma * noise, 0.0).astype(np.float32)
        out[out < 0] = 0.0
    if d.depth_holes:
        out[~depth_holes(depth, cos_incidence, frame_rng(seed, index, 2))] = 0.0
    if d.depth_quantise:
        out = quantise_kinect(out)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Colour


def _to_linear(rgb_u8: np.ndarray) -> np.ndarray:
    return (rgb_u8.astype(np.float32) / 255.0) ** 2.2


def _to_u8(linear: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.clip(linear, 0.0, 1.0) ** (1 / 2.2) * 255.0), 0, 255).astype(np.uint8)


def motion_blur(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, T_world_cam: np.ndarray,
                T_world_sub: np.ndarray) -> np.ndarray:
    """Average of the image seen from each pose in `T_world_sub` [S,4,4] (poses over the exposure).

    Each sub-frame is the rendered image warped by the per-pixel motion its depth implies (a backward warp with
    the flow taken at the target pixel: exact for smooth flow, a pixel off at depth edges, where real blur mixes
    foreground and background anyway). Missing depth counts as 10 m.
    """
    h, w = depth.shape
    z = np.where(depth > 0, depth, 10.0).astype(np.float64)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    X = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=-1).reshape(-1, 3)
    X = X.astype(np.float32)
    u, v = u.astype(np.float32), v.astype(np.float32)
    lin = _to_linear(rgb)
    acc = np.zeros_like(lin)
    for T in T_world_sub:
        T_sub_cam = np.linalg.inv(T) @ T_world_cam  # frame camera -> sub-frame camera
        Xs = X @ T_sub_cam[:3, :3].T.astype(np.float32) + T_sub_cam[:3, 3].astype(np.float32)
        zs = np.maximum(Xs[:, 2], 1e-3)
        us = (Xs[:, 0] / zs * K[0, 0] + K[0, 2]).reshape(h, w)
        vs = (Xs[:, 1] / zs * K[1, 1] + K[1, 2]).reshape(h, w)
        map_x = (2 * u - us).astype(np.float32)
        map_y = (2 * v - vs).astype(np.float32)
        acc += cv2.remap(lin, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return _to_u8(acc / len(T_world_sub))


def _smooth_process(seed: int, salt: int, t: float, n: int = 4) -> float:
    """A smooth zero-mean unit-variance process of time (seconds): random sinusoids with periods of 2-10 s."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xE5905E, salt])
    periods = rng.uniform(2.0, 10.0, n)
    phases = rng.uniform(0, 2 * math.pi, n)
    return float(np.sum(np.sin(2 * math.pi * t / periods + phases)) * math.sqrt(2.0 / n))


def colour_gains(d: Degradations, seed: int, t: float) -> np.ndarray:
    """Per-channel linear gains (RGB) of the auto exposure and white balance at time t (seconds)."""
    g = math.exp(d.exposure * _smooth_process(seed, 0, t))
    wb = np.array([math.exp(d.white_balance * _smooth_process(seed, c + 1, t)) for c in range(3)])
    return g * wb / np.exp(np.mean(np.log(wb)))  # white balance shifts hue, the exposure sets brightness


def degrade_colour(rgb: np.ndarray, d: Degradations, seed: int, index: int, t: float,
                   blurred: np.ndarray | None = None) -> np.ndarray:
    """Colour image (uint8 RGB) after exposure, white balance, sensor noise and JPEG; `blurred` replaces `rgb`
    when motion blur was applied (it needs depth and poses, see `motion_blur`)."""
    img = rgb if blurred is None else blurred
    if d.exposure or d.white_balance:
        img = _to_u8(_to_linear(img) * colour_gains(d, seed, t).astype(np.float32))
    if d.sensor_noise:
        rng = frame_rng(seed, index, 3)
        f = img.astype(np.float32)
        sigma = d.sensor_noise * np.sqrt(1.0 + f / 64.0)
        img = np.clip(np.round(f + sigma * rng.standard_normal(f.shape).astype(np.float32)), 0, 255).astype(np.uint8)
    if d.jpeg_quality:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, d.jpeg_quality])
        if not ok:
            raise ConfigError("JPEG encoding failed")  # cannot happen for a uint8 RGB image
        img = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)
