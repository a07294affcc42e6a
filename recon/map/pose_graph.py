"""Pose-graph optimisation of the keyframes with GTSAM: SE(3) for metric backends, Sim(3) otherwise.

Nodes are keyframe poses (world <- camera). Odometry edges join consecutive keyframes with the relative pose
the backend measured; loop edges carry verified relative transforms. In Sim(3) mode every node has its own
scale, so the scale drift of monocular and up-to-scale learned backends is absorbed per keyframe chunk (the
Sim(3) pose graph of Strasdat et al. 2010, ORB-SLAM's essential graph). GTSAM's Python wrapper has
`Similarity3` and `BetweenFactorSimilarity3` (checked with gtsam 4.3), so both modes are plain GTSAM graphs
solved by Levenberg-Marquardt. Loops are verified before they get here, so they enter as plain Gaussian edges
(a robust kernel on the first loop of a long drift would treat the loop itself as the outlier: the residual is
the whole drift); after the solve, a loop whose whitened error stays above `reject_chi2` while others agree
is dropped and the graph solved again, so one wrong loop cannot bend the whole map.

Noise is relative to the map's scene scale `unit` (the median keyframe depth), so the same sigmas fit metres and
arbitrary units. Loop edges are given smaller sigmas than one odometry edge: a loop is one direct measurement,
while the drift it corrects accumulates over many odometry edges, and the closure error left at the loop is
about sigma_loop^2 / (sigma_loop^2 + n * sigma_odom^2) of the drift for n odometry edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.geometry import Sim3
from recon.utils.imports import require_package


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
        R = M[:3, :3] / s
        U, _, Vt = np.linalg.svd(R)  # re-orthonormalise what the solver's float round-off left
        return Sim3(s, U @ Vt, M[:3, 3].copy())
    M = np.asarray(value.matrix())
    U, _, Vt = np.linalg.svd(M[:3, :3])
    return Sim3(1.0, U @ Vt, M[:3, 3].copy())


def optimise_pose_graph(initial: list[Sim3], odometry: list[Sim3], loops: list[tuple[int, int, Sim3]], *,
                        sim3: bool, unit: float, noise: GraphNoise = GraphNoise(),
                        iterations: int = 100) -> tuple[list[Sim3], dict[str, float]]:
    """Optimised keyframe poses.

    Args:
        initial: node poses world <- camera (initial guess), one per keyframe.
        odometry: `odometry[i]` is the measured camera_i <- camera_{i+1} (len(initial) - 1 of them).
        loops: (i, j, S_i_j): verified camera_i <- camera_j measurements.
        sim3: Sim(3) nodes and edges (per-keyframe scale) instead of SE(3).
        unit: scene scale for the translation sigmas.

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
            graph.add(Between(i, i + 1, _to_gtsam(S, sim3), odom_model))
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
