"""Odometry edges of the keyframe pose graph: how consecutive keyframes are joined.

Metric backends keep the backend's relative pose (SE(3)). For up-to-scale backends (learned point maps,
monocular) the scale between two keyframes is measured, as VGGT-Long / VGGT-SLAM join their chunks by Sim(3), so
per-chunk scale drift becomes a quantity the pose graph knows with its own uncertainty, instead of "scale 1 with
sigma `odom_scale`" on every edge (which lets a loop correct the product of the scale errors, spread evenly, but
not a jump where it happened). Sources, in this order:

- results that carry a `ChunkLink` (windowed backends that join their windows themselves, e.g. LASER): the
  backend's relative pose (its join is already applied) with a tight scale sigma inside one chunk (one prediction
  has one scale) and, across joins, each join's own log-scale sigma when the backend reports one (else the
  graph's `odom_scale`), so a loop's scale correction goes to the joins;
- otherwise the two keyframes' shared points: ORB matches with 3-D on both sides and a RANSAC Umeyama Sim(3)
  (`recon.map.verify.fit_relative`), accepted when it has `min_inliers` and its rotation agrees with the
  backend's; the edge is the backend's rotation and translation with the fit's scale fused with the graph's
  prior of scale 1 (log-scales weighted by inverse variances: the fit's sigma, its residual over the points'
  spread floored because depth errors of neighbouring pixels are correlated, and `odom_scale`, the drift the
  graph expects per edge). A precise fit (learned chunks whose scales jump) decides the edge; a noisy one (a
  monocular tracker's interpolated depth, whose points share one map with its poses, so the true ratio is 1)
  barely moves it from 1 and tightens it a little;
- else the backend's relative pose with the graph's sigmas (counted as a fallback).

Only the scale is taken from the points, and rotation and translation keep the graph's odometry sigmas: a
backend's point maps move with its drifted poses, so they measure the same rotation and translation as the poses
and cannot reveal their drift (a refinement against the image pixels would mix in a second, image-based motion
estimate that disagrees with the backend's by its drift, and on a rendered loop made the corrected path worse);
the scale between two keyframes is the one thing the poses lack. Tighter rotation sigmas would only stiffen the
graph against the loop that has to bend it. The fit needs fewer matches than a loop (`min_inliers`, default 10
instead of 25): consecutive keyframes are known to overlap, the backend's rotation checks the fit, and a scale
from few points comes with the larger sigma its residuals give.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from recon.geometry import Sim3, inv_se3, rotation_angle
from recon.map.keyframes import Keyframe
from recon.map.verify import VerifyOptions, accepted, fit_relative
from recon.types import ChunkLink

logger = logging.getLogger(__name__)

SOURCES = ("backend", "points", "chunk", "fallback")


@dataclass(frozen=True)
class OdometryOptions:
    """How consecutive keyframes of an up-to-scale backend are joined.

    Attributes:
        edges: "measured" (the sources of the module docstring) or "backend" (the backend's relative pose with
            scale 1 for every edge, the behaviour before measured edges; for comparisons).
        scale_floor: smallest log-scale sigma of a point-measured edge (0.5 %, the loop edges' own sigma: an
            odometry edge is measured the same way as a loop, from two keyframes' points).
        chunk_scale: log-scale sigma between keyframes of one chunk of a windowed backend (0.2 %).
        max_rotation_deg: a point-measured edge whose rotation differs from the backend's by more is not used
            (the backend's relative rotation over a few frames is far better than that; a wrong fit is not).
        min_inliers: 3-D inliers (and epipolar-consistent matches) a point-measured edge needs.
        inlier_rel: 3-D inlier threshold as a fraction of the keyframe's median depth.
        iterations: RANSAC iterations (50: consecutive keyframes share mostly inliers; at an inlier ratio of 1/2
            a 3-point sample is clean with probability 1/8, and 50 draws miss every clean one with p = 0.001).
    """

    edges: str = "measured"
    scale_floor: float = 0.005
    chunk_scale: float = 0.002
    max_rotation_deg: float = 5.0
    min_inliers: int = 10
    inlier_rel: float = 0.05
    iterations: int = 50


@dataclass(frozen=True)
class OdometryEdge:
    """What joins consecutive keyframes a, b: the scale of camera_a <- camera_b (its rotation and translation are
    the backend's, taken when the graph is solved: `sim3`), its log-scale sigma (None: the graph's default) and
    where it came from."""

    scale: float
    scale_sigma: float | None
    source: str

    def sim3(self, a: Keyframe, b: Keyframe) -> Sim3:
        """The edge camera_a <- camera_b with the keyframes' current backend poses."""
        prior = backend_relative(a, b)
        return Sim3(self.scale, prior.R, prior.t)


def backend_relative(a: Keyframe, b: Keyframe) -> Sim3:
    """The backend's own relative pose camera_a <- camera_b (scale 1)."""
    return Sim3.from_se3(inv_se3(a.T_odom_cam) @ b.T_odom_cam)


def chunk_scale_sigma(ca: ChunkLink | None, cb: ChunkLink | None, joins: dict[int, ChunkLink],
                      options: OdometryOptions, default: float) -> float | None:
    """Log-scale sigma between results of chunks `ca` and `cb` from the joins between them; None when either
    result has no chunk (or the order is not forward)."""
    if ca is None or cb is None or cb.index < ca.index:
        return None
    if cb.index == ca.index:
        return options.chunk_scale
    var = 0.0
    for index in range(ca.index + 1, cb.index + 1):
        link = joins.get(index)
        sigma = link.log_scale_sigma if link is not None and link.log_scale_sigma is not None else default
        var += float(sigma) ** 2
    return float(np.sqrt(var))


def fused(scale: float, sigma: float, prior_sigma: float) -> OdometryEdge:
    """A measured scale (log-normal, `sigma`) fused with the prior scale 1 (`prior_sigma`)."""
    w_meas, w_prior = sigma ** -2, prior_sigma ** -2
    return OdometryEdge(float(np.exp(w_meas * np.log(scale) / (w_meas + w_prior))),
                        float((w_meas + w_prior) ** -0.5), "points")


def measure_edge(a: Keyframe, b: Keyframe, K: np.ndarray | None, *, sim3: bool, verify: VerifyOptions,
                 options: OdometryOptions, default_scale: float, chunks: tuple[ChunkLink | None, ChunkLink | None],
                 joins: dict[int, ChunkLink]) -> OdometryEdge:
    """The odometry edge a -> b (see the module docstring for the order of the sources)."""
    if not sim3 or options.edges == "backend":
        return OdometryEdge(1.0, None, "backend")
    sigma = chunk_scale_sigma(chunks[0], chunks[1], joins, options, default_scale)
    if sigma is not None:
        return OdometryEdge(1.0, sigma, "chunk")
    prior = backend_relative(a, b)
    verify = replace(verify, min_matches=options.min_inliers, min_inliers=options.min_inliers,
                     inlier_rel=options.inlier_rel, iterations=options.iterations)
    fit = None if K is None else fit_relative(b, a, K, metric=False, options=verify, refine=False)
    if accepted(fit, verify):
        S = fit.S_match_query
        turned = float(np.degrees(rotation_angle(prior.R.T @ S.R)))
        if turned <= options.max_rotation_deg:
            return fused(S.s, max(fit.log_scale_sigma, options.scale_floor), default_scale)
        logger.debug("map: odometry %d -> %d from points turns %.1f deg from the backend's; not used", a.index,
                     b.index, turned)
    return OdometryEdge(1.0, None, "fallback")
