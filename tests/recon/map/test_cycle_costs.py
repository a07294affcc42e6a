"""The pairwise loop-consistency costs (`pose_graph._cycle_costs`), computed for all pairs at once with plain
similarity matrices, against the cycle composed pair by pair with `Sim3` as the docstring of `consistent_loops`
states it: E = S_a P_ja^-1 P_jb S_b^-1 P_ib^-1 P_ia, P the odometry's prefix products.

The two differ only in floating-point rounding (matrix products of sR instead of separate s and R), so they must
agree to ~1e-9 relative (the costs are O(1)-O(1e6) sums of squares of quantities computed to ~1e-15).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import chdtri

from recon.geometry import Sim3, rotation_angle
from recon.geometry.transforms import so3_exp
from recon.map.pose_graph import GraphNoise, _cycle_costs, consistent_loops


def _reference_costs(odometry: list[Sim3], loops: list[tuple[int, int, Sim3]], *, sim3: bool, unit: float,
                     noise: GraphNoise) -> np.ndarray:
    P = [Sim3.identity()]
    for S in odometry:
        P.append(P[-1] @ S)
    n = len(loops)
    cost = np.full((n, n), np.inf)
    for a in range(n):
        for b in range(a + 1, n):
            ia, ja, Sa = loops[a]
            ib, jb, Sb = loops[b]
            E = Sa @ P[ja].inverse() @ P[jb] @ Sb.inverse() @ P[ib].inverse() @ P[ia]
            edges = abs(ja - jb) + abs(ia - ib)
            c = float(rotation_angle(E.R)) ** 2 / (edges * noise.odom_rot ** 2 + 2 * noise.loop_rot ** 2)
            c += float(E.t @ E.t) / ((edges * noise.odom_trans ** 2 + 2 * noise.loop_trans ** 2) * unit ** 2)
            if sim3:
                c += float(np.log(E.s)) ** 2 / (edges * noise.odom_scale ** 2 + 2 * noise.loop_scale ** 2)
            cost[a, b] = cost[b, a] = c
    return cost


def _graph(seed: int, nodes: int, n_loops: int, sim3: bool) -> tuple[list[Sim3], list[tuple[int, int, Sim3]]]:
    """A drifting walk with loops between random keyframes: most consistent, some rotated, some off in scale."""
    rng = np.random.default_rng(seed)

    def step(rot: float, trans: float, log_s: float) -> Sim3:
        return Sim3(float(np.exp(rng.normal(scale=log_s))) if sim3 else 1.0, so3_exp(rng.normal(scale=rot, size=3)),
                    rng.normal(scale=trans, size=3) + np.array([0.3, 0.0, 0.0]))

    odometry = [step(0.02, 0.05, 0.01) for _ in range(nodes - 1)]
    P = [Sim3.identity()]
    for S in odometry:
        P.append(P[-1] @ S)
    loops = []
    for k in range(n_loops):
        i, j = sorted(int(v) for v in rng.choice(nodes, 2, replace=False))
        S = P[i].inverse() @ P[j]
        if k % 5 == 0:  # a wrong loop: 8 degrees off
            S = Sim3(S.s, so3_exp(np.array([0.0, np.radians(8), 0.0])) @ S.R, S.t)
        noise = Sim3(1.0, so3_exp(rng.normal(scale=0.005, size=3)), rng.normal(scale=0.01, size=3))
        loops.append((i, j, S @ noise))
    return odometry, loops


@pytest.mark.parametrize("sim3", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_cycle_costs_equal_the_pairwise_sim3_cycles(sim3: bool, seed: int) -> None:
    odometry, loops = _graph(seed, nodes=120, n_loops=24, sim3=sim3)
    noise = GraphNoise()
    got = _cycle_costs(odometry, loops, sim3=sim3, unit=1.5, noise=noise)
    want = _reference_costs(odometry, loops, sim3=sim3, unit=1.5, noise=noise)
    assert np.isinf(np.diag(got)).all()
    off = ~np.eye(len(loops), dtype=bool)
    assert np.isfinite(got[off]).all()
    np.testing.assert_allclose(got[off], want[off], rtol=1e-9, atol=1e-9)
    assert np.array_equal(got, got.T)
    # The fixture spans both sides of the consistency limit (the chi-square 0.999 quantile), so the comparison
    # above covers the decisions too.
    limit = chdtri(7 if sim3 else 6, 0.001)
    assert (want[off] < limit).any() and (want[off] > limit).any()
    assert np.array_equal(got < limit, want < limit)


def test_consistent_loops_leave_out_the_wrong_loops_of_a_larger_graph() -> None:
    odometry, loops = _graph(3, nodes=200, n_loops=20, sim3=True)
    kept = consistent_loops(odometry, loops, sim3=True, unit=1.0)
    assert kept  # a consistent set exists
    assert not {k for k in range(0, 20, 5)} & set(kept)  # every 5th loop is 8 degrees off
