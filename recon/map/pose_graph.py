"""Pose-graph optimisation of the keyframes with GTSAM: SE(3) for metric backends, Sim(3) otherwise.

Nodes are keyframe poses (world <- camera). Odometry edges join consecutive keyframes (recon.map.odometry: the
backend's relative pose, or for up-to-scale backends a measured Sim(3) with its own scale sigma); loop edges carry
verified relative transforms. In Sim(3) mode every node has its own scale, so the scale drift of monocular and
up-to-scale learned backends is absorbed per keyframe chunk (the Sim(3) pose graph of Strasdat et al. 2010,
ORB-SLAM's essential graph). GTSAM's Python wrapper has `Similarity3` and `BetweenFactorSimilarity3` (checked with
gtsam 4.3), so both modes are plain GTSAM graphs solved by Levenberg-Marquardt. Loops are verified before they get
here, so they enter as plain Gaussian edges (a robust kernel on the first loop of a long drift would treat the loop
itself as the outlier: the residual is the whole drift); after the solve, a loop whose whitened error stays above
`reject_chi2` while others agree is dropped and the graph solved again, so one wrong loop cannot bend the whole map.

Before a solve, loops are checked against each other (`consistent_loops`, the pairwise consistency test of PCM,
Mangelson et al. 2018): two loops and the odometry between their ends form a cycle that must compose to the
identity within the noise of its edges. The largest mutually consistent set is used. This catches what per-loop
verification cannot: a wrong loop whose geometry is self-consistent (matches bunched in a small part of the
image leave rotation and translation ambiguous: a rendered loop gave one 17 degrees off with every inlier test
passed), which one solve would otherwise spread over the odometry instead of rejecting it.

Noise is relative to the map's scene scale `unit` (the median keyframe depth), so the same sigmas fit metres and
arbitrary units. Loop edges are given smaller sigmas than one odometry edge: a loop is one direct measurement,
while the drift it corrects accumulates over many odometry edges, and the closure error left at the loop is
about sigma_loop^2 / (sigma_loop^2 + n * sigma_odom^2) of the drift for n odometry edges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.special import chdtri

from recon.geometry import Sim3, rotation_angle
from recon.geometry.transforms import orthonormalise
from recon.utils.imports import require_package

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphNoise:
    """Standard deviations: rotation in radians, translation in scene units, scale as log-scale."""

    odom_rot: float = 0.01
    odom_trans: float = 0.02
    odom_scale: float = 0.02
    loop_rot: float = 0.005
    loop_trans: float = 0.005
    loop_scale: float = 0.005
    reject_chi2: float = 100.0


def _gtsam():  # noqa: ANN202 - the gtsam module
    """gtsam, or an ImportError saying how to install it."""
    return require_package("gtsam", pip_name="gtsam")


def _to_gtsam(S: Sim3, sim3: bool):
    gtsam = _gtsam()
    if sim3:
        return gtsam.Similarity3(gtsam.Rot3(S.R), np.asarray(S.t / S.s, np.float64), float(S.s))
    return gtsam.Pose3(gtsam.Rot3(S.R), np.asarray(S.t, np.float64))


def _from_gtsam(value, sim3: bool) -> Sim3:
    if sim3:
        M = np.asarray(value.matrix())
        M = M / M[3, 3]
        s = float(np.cbrt(np.linalg.det(M[:3, :3])))
        return Sim3(s, orthonormalise(M[:3, :3] / s), M[:3, 3].copy())  # the solver's round-off removed
    M = np.asarray(value.matrix())
    return Sim3(1.0, orthonormalise(M[:3, :3]), M[:3, 3].copy())


def _chain_matrices(odometry: list[Sim3]) -> np.ndarray:
    """4x4 similarity matrices [n+1,4,4] of the keyframes in the frame of keyframe 0 (prefix products of the
    odometry). Plain matrices, not `Sim3`s: each `Sim3` checks its rotation on construction, and composing one per
    odometry edge and six per loop pair took ~0.6 s per solve of a live map with 64 loops and 800 keyframes."""
    P = np.empty((len(odometry) + 1, 4, 4))
    P[0] = np.eye(4)
    for k, S in enumerate(odometry):
        P[k + 1] = P[k] @ S.matrix()
    return P


def _similarity_inverse(M: np.ndarray) -> np.ndarray:
    """Inverses of similarity matrices [...,4,4] = [[sR, t], [0, 1]]: (sR)^-1 = (sR)^T / s^2."""
    A, t = M[..., :3, :3], M[..., :3, 3]
    s2 = np.cbrt(np.linalg.det(A))[..., None, None] ** 2
    out = np.zeros_like(M)
    out[..., :3, :3] = np.swapaxes(A, -1, -2) / s2
    out[..., :3, 3] = -(out[..., :3, :3] @ t[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def _cycle_costs(odometry: list[Sim3], loops: list[tuple[int, int, Sim3]], *, sim3: bool, unit: float,
                 noise: GraphNoise) -> np.ndarray:
    """Whitened squared error [n,n] of the cycle each pair of loops closes with the odometry (inf on the diagonal).

    For loops a = (i_a, j_a, S_a) and b the cycle is E = S_a P_ja^-1 P_jb S_b^-1 P_ib^-1 P_ia, computed for all
    pairs at once as (S_a P_ja^-1) (P_jb S_b^-1 P_ib^-1) P_ia.
    """
    P = _chain_matrices(odometry)
    i = np.array([int(lp[0]) for lp in loops])
    j = np.array([int(lp[1]) for lp in loops])
    S = np.stack([lp[2].matrix() for lp in loops])
    left = S @ _similarity_inverse(P[j])
    mid = P[j] @ _similarity_inverse(S) @ _similarity_inverse(P[i])
    E = np.einsum("aij,bjk,akl->abil", left, mid, P[i])
    A = E[..., :3, :3]
    scale = np.cbrt(np.linalg.det(A))
    angle = rotation_angle(A / scale[..., None, None])
    t = E[..., :3, 3]
    edges = np.abs(j[:, None] - j[None, :]) + np.abs(i[:, None] - i[None, :])
    var_r = edges * noise.odom_rot ** 2 + 2 * noise.loop_rot ** 2
    var_t = (edges * noise.odom_trans ** 2 + 2 * noise.loop_trans ** 2) * unit ** 2
    cost = angle ** 2 / var_r + np.einsum("abk,abk->ab", t, t) / var_t
    if sim3:
        cost += np.log(scale) ** 2 / (edges * noise.odom_scale ** 2 + 2 * noise.loop_scale ** 2)
    upper = np.triu(cost, 1)  # each pair once (a < b), as the cycle of b then a is the same one reversed
    out = upper + upper.T
    np.fill_diagonal(out, np.inf)
    return out


def consistent_loops(odometry: list[Sim3], loops: list[tuple[int, int, Sim3]], *, sim3: bool, unit: float,
                     noise: GraphNoise = GraphNoise(), p: float = 0.999, search_budget: int = 5000) -> list[int]:
    """Indices of the largest set of loops that are pairwise consistent with each other and the odometry.

    Loops a = (i_a, j_a, S_a) and b close the cycle S_a (odometry j_a -> j_b) S_b^-1 (odometry i_b -> i_a),
    which is the identity for exact measurements. Its rotation angle, translation and log-scale are compared
    with their standard deviations from the graph's own sigmas (n odometry edges on the two paths, two loops):
    the pair is consistent when the sum of squares is below the chi-square quantile `p` (7 or 6 degrees of
    freedom). Ties between sets of the same size go to the one with the smaller total cycle error.

    The set is a maximum clique, exponential in the worst case: a camera that circles one room finds a loop at
    nearly every keyframe, many of them nearly consistent, and an unbounded search took minutes in one step
    (77 loops). So at most `search_budget` sets are tried; the first, greedy descent already yields a maximal
    set, and the search keeps the largest found when the budget runs out (logged).
    """
    n = len(loops)
    if n <= 1:
        return list(range(n))
    unit = max(float(unit), 1e-9)
    limit = float(chdtri(7 if sim3 else 6, 1.0 - p))  # the chi-square quantile p
    cost = _cycle_costs(odometry, loops, sim3=sim3, unit=unit, noise=noise)
    ok = cost < limit
    best: tuple[int, float, list[int]] = (1, 0.0, [0])
    left = max(1, int(search_budget))

    def grow(clique: list[int], candidates: list[int], total: float) -> None:
        nonlocal best, left
        left -= 1
        if (len(clique), -total) > (best[0], -best[1]):
            best = (len(clique), total, list(clique))
        for k, c in enumerate(candidates):
            if left <= 0 or len(clique) + len(candidates) - k < best[0]:
                return  # out of budget, or cannot beat the best any more
            grow(clique + [c], [d for d in candidates[k + 1:] if ok[c, d]], total + sum(cost[c, e] for e in clique))

    grow([], list(range(n)), 0.0)
    if left <= 0:
        logger.info("pose graph: consistent-set search of %d loops stopped after %d sets (largest found: %d)", n,
                    int(search_budget), best[0])
    return sorted(best[2])


def optimise_pose_graph(initial: list[Sim3], odometry: list[Sim3], loops: list[tuple[int, int, Sim3]], *,
                        sim3: bool, unit: float, noise: GraphNoise = GraphNoise(),
                        odometry_scale_sigmas: list[float | None] | None = None,
                        iterations: int = 100) -> tuple[list[Sim3], dict[str, float]]:
    """Optimised keyframe poses.

    Args:
        initial: node poses world <- camera (initial guess), one per keyframe.
        odometry: `odometry[i]` is the measured camera_i <- camera_{i+1} (len(initial) - 1 of them).
        loops: (i, j, S_i_j): verified camera_i <- camera_j measurements.
        sim3: Sim(3) nodes and edges (per-keyframe scale) instead of SE(3).
        unit: scene scale for the translation sigmas.
        odometry_scale_sigmas: per odometry edge, its log-scale sigma (Sim(3) only); None entries (or no list)
            take `noise.odom_scale`.

    Returns:
        the optimised poses and {"error_before", "error_after", "iterations"}.
    """
    gtsam = _gtsam()
    n = len(initial)
    if len(odometry) != n - 1:
        raise ValueError(f"pose graph: {n} nodes need {n - 1} odometry edges, got {len(odometry)}")
    unit = max(float(unit), 1e-9)

    def sigmas(rot: float, trans: float, scale: float) -> np.ndarray:
        base = [rot] * 3 + [trans * unit] * 3
        return np.array(base + [scale] if sim3 else base, np.float64)

    Diagonal = gtsam.noiseModel.Diagonal
    odom_model = Diagonal.Sigmas(sigmas(noise.odom_rot, noise.odom_trans, noise.odom_scale))
    scale_sigmas = odometry_scale_sigmas if sim3 and odometry_scale_sigmas is not None else [None] * len(odometry)
    if len(scale_sigmas) != len(odometry):
        raise ValueError(f"pose graph: {len(odometry)} odometry edges, {len(scale_sigmas)} scale sigmas")
    odom_models = [odom_model if sc is None else Diagonal.Sigmas(sigmas(noise.odom_rot, noise.odom_trans, float(sc)))
                   for sc in scale_sigmas]
    loop_model = Diagonal.Sigmas(sigmas(noise.loop_rot, noise.loop_trans, noise.loop_scale))
    prior_model = Diagonal.Sigmas(sigmas(1e-6, 1e-6, 1e-6))
    Between = gtsam.BetweenFactorSimilarity3 if sim3 else gtsam.BetweenFactorPose3
    Prior = gtsam.PriorFactorSimilarity3 if sim3 else gtsam.PriorFactorPose3

    values = gtsam.Values()
    for i, S in enumerate(initial):
        values.insert(i, _to_gtsam(S, sim3))
    keep = list(range(len(loops)))
    rejected = 0
    while True:
        graph = gtsam.NonlinearFactorGraph()
        graph.add(Prior(0, _to_gtsam(initial[0], sim3), prior_model))
        for i, S in enumerate(odometry):
            graph.add(Between(i, i + 1, _to_gtsam(S, sim3), odom_models[i]))
        loop_factors = []
        for li in keep:
            i, j, S = loops[li]
            loop_factors.append(Between(int(i), int(j), _to_gtsam(S, sim3), loop_model))
            graph.add(loop_factors[-1])
        params = gtsam.LevenbergMarquardtParams()
        params.setMaxIterations(int(iterations))
        optimiser = gtsam.LevenbergMarquardtOptimizer(graph, values, params)
        before = float(graph.error(values))
        result = optimiser.optimize()
        errors = np.array([2.0 * f.error(result) for f in loop_factors])
        worst = int(np.argmax(errors)) if len(errors) > 1 else -1
        if worst < 0 or errors[worst] <= noise.reject_chi2:
            break
        keep.pop(worst)  # the loop the others disagree with most
        rejected += 1
    info = {"error_before": before, "error_after": float(graph.error(result)),
            "iterations": float(optimiser.iterations()), "loops_rejected": float(rejected)}
    getter = result.atSimilarity3 if sim3 else result.atPose3
    return [_from_gtsam(getter(i), sim3) for i in range(n)], info
