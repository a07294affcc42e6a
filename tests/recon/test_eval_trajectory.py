"""Trajectory metrics: association, ATE/RPE known answers, invariances, monotonicity, evo cross-check."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from recon.errors import ConfigError
from recon.eval import (
    EvaluationError,
    absolute_trajectory_error,
    associate_timestamps,
    relative_pose_error,
    rpe_pairs,
    trajectory_length,
)
from recon.geometry import Sim3, make_se3, so3_exp


def random_trajectory(rng: np.random.Generator, n: int = 60) -> np.ndarray:
    """Smooth-ish camera-to-world poses [n,4,4]: a random walk in position and orientation."""
    pos = np.cumsum(rng.normal(scale=0.1, size=(n, 3)), axis=0)
    rots = [np.eye(3)]
    for _ in range(n - 1):
        rots.append(rots[-1] @ so3_exp(rng.normal(scale=0.05, size=3)))
    return make_se3(np.stack(rots), pos)


def perturb(rng: np.random.Generator, T: np.ndarray, sigma_t: float, sigma_r: float) -> np.ndarray:
    R = T[:, :3, :3] @ so3_exp(rng.normal(scale=sigma_r, size=(len(T), 3)))
    return make_se3(R, T[:, :3, 3] + rng.normal(scale=sigma_t, size=(len(T), 3)))


def random_sim3(rng: np.random.Generator) -> Sim3:
    R = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    return Sim3(float(rng.uniform(0.2, 5.0)), R, rng.normal(scale=3.0, size=3))


# --- association -------------------------------------------------------------------------------------------------


def test_association_one_to_one_closest_first() -> None:
    t_gt = np.array([0, 10, 20, 30, 40]) * 1_000_000  # 100 Hz ground truth
    t_pred = np.array([1, 9, 33, 100]) * 1_000_000  # 9 ms and 1 ms both want gt 10 ms / 0 ms
    a = associate_timestamps(t_pred, t_gt, max_diff_ns=5_000_000)
    assert a.idx_pred.tolist() == [0, 1, 2]
    assert a.idx_gt.tolist() == [0, 1, 3]
    assert a.dt_ns.tolist() == [1_000_000, -1_000_000, 3_000_000]


def test_association_unique_when_gt_is_denser_and_unsorted() -> None:
    t_gt = np.array([30, 10, 20, 0])
    t_pred = np.array([21, 19])
    a = associate_timestamps(t_pred, t_gt, max_diff_ns=5)
    # 21 and 19 are both 1 from gt 20 (index 2): only one gets it; the other has nothing else within 5 ns.
    assert len(a) == 1 and a.idx_gt[0] == 2 and a.idx_pred[0] == 0  # tie broken by the lower index


def test_association_empty_and_bad_arguments() -> None:
    assert len(associate_timestamps(np.array([0]), np.array([10**9]), 10)) == 0
    with pytest.raises(ConfigError):
        associate_timestamps(np.array([0]), np.array([0]), -1)


# --- ATE ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("align", ["sim3", "se3", "none"])
def test_ate_zero_for_identical(align: str) -> None:
    T = random_trajectory(np.random.default_rng(0))
    r = absolute_trajectory_error(T, T, align)
    assert r.rmse < 1e-12
    assert r.alignment.s == pytest.approx(1.0)


def test_ate_sim3_removes_random_similarity_exactly() -> None:
    rng = np.random.default_rng(1)
    T_gt = random_trajectory(rng)
    S = random_sim3(rng)
    T_pred = S.inverse().apply_poses(T_gt)
    r = absolute_trajectory_error(T_pred, T_gt, "sim3")
    assert r.rmse < 1e-9
    assert r.alignment.s == pytest.approx(S.s, rel=1e-9)
    np.testing.assert_allclose(r.T_pred_aligned, T_gt, atol=1e-9)
    # Rigid alignment cannot undo the scale; no alignment cannot undo anything.
    assert absolute_trajectory_error(T_pred, T_gt, "se3").rmse > 1e-3
    assert absolute_trajectory_error(T_pred, T_gt, "none").rmse > absolute_trajectory_error(T_pred, T_gt, "se3").rmse


def test_ate_known_answer_constant_offset_without_alignment() -> None:
    T_gt = random_trajectory(np.random.default_rng(2), 10)
    T_pred = T_gt.copy()
    T_pred[:, :3, 3] += [0.3, 0.0, 0.4]
    r = absolute_trajectory_error(T_pred, T_gt, "none")
    assert r.rmse == pytest.approx(0.5)
    assert r.stats["median"] == pytest.approx(0.5)
    assert absolute_trajectory_error(T_pred, T_gt, "se3").rmse < 1e-12  # a pure translation is rigid


def test_ate_increases_with_noise() -> None:
    rng = np.random.default_rng(3)
    T_gt = random_trajectory(rng, 100)
    base = rng.normal(size=(100, 3))
    rmses = []
    for sigma in (0.001, 0.01, 0.1):
        T_pred = T_gt.copy()
        T_pred[:, :3, 3] += sigma * base
        rmses.append(absolute_trajectory_error(T_pred, T_gt, "sim3").rmse)
    assert rmses[0] < rmses[1] < rmses[2]
    assert rmses[1] == pytest.approx(10 * rmses[0], rel=0.05)


def test_ate_straight_line_is_evaluated_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    n = 20
    T_gt = make_se3(np.tile(np.eye(3), (n, 1, 1)), np.outer(np.arange(n), [0.0, 0.0, 0.1]))
    T_pred = Sim3(0.5, np.eye(3), np.ones(3)).apply_poses(T_gt)
    r = absolute_trajectory_error(T_pred, T_gt, "sim3")
    assert r.rmse < 1e-9
    assert "degenerate" in caplog.text


def test_ate_too_few_poses_and_bad_mode() -> None:
    T = random_trajectory(np.random.default_rng(4), 1)
    with pytest.raises(EvaluationError, match="at least 2"):
        absolute_trajectory_error(T, T, "sim3")
    with pytest.raises(ConfigError, match="align"):
        absolute_trajectory_error(T, T, "sim2")  # type: ignore[arg-type]
    with pytest.raises(EvaluationError, match="equal lengths"):
        absolute_trajectory_error(np.concatenate([T, T]), T, "none")
    with pytest.raises(EvaluationError, match=r"\[N,4,4\]"):
        absolute_trajectory_error(T[0], T[0], "none")


# --- RPE ---------------------------------------------------------------------------------------------------------


def test_rpe_pairs_follow_evo_rule() -> None:
    assert rpe_pairs(7, 2).tolist() == [[0, 2], [2, 4], [4, 6]]
    assert rpe_pairs(5, 2, all_pairs=True).tolist() == [[0, 2], [1, 3], [2, 4]]
    with pytest.raises(ConfigError):
        rpe_pairs(5, 0)


def test_rpe_invariant_to_rigid_world_change_and_zero_for_identical() -> None:
    rng = np.random.default_rng(5)
    T_gt = random_trajectory(rng)
    r0 = relative_pose_error(T_gt, T_gt, delta=3)
    assert r0.trans_stats["max"] < 1e-12 and r0.rot_stats["max"] < 1e-6
    S = random_sim3(rng)
    rigid = Sim3(1.0, S.R, S.t)
    r = relative_pose_error(rigid.apply_poses(T_gt), T_gt, delta=1)
    assert r.trans_stats["max"] < 1e-9 and r.rot_stats["max"] < 1e-6
    # A scaled copy has RPE unless Sim(3) alignment corrects the scale.
    scaled = S.apply_poses(T_gt)
    assert relative_pose_error(scaled, T_gt, 1, "none").trans_stats["rmse"] > 1e-3
    assert relative_pose_error(scaled, T_gt, 1, "sim3").trans_stats["rmse"] < 1e-9


def test_rpe_known_answer_single_rotation_error() -> None:
    n = 5
    T_gt = make_se3(np.tile(np.eye(3), (n, 1, 1)), np.outer(np.arange(n), [1.0, 0.0, 0.0]))
    T_pred = T_gt.copy()
    T_pred[3:, :3, :3] = so3_exp(np.array([0.0, 0.0, np.radians(10.0)]))  # rotation jumps between frames 2 and 3
    r = relative_pose_error(T_pred, T_gt, delta=1, all_pairs=True)
    np.testing.assert_allclose(r.rot_errors_deg, [0.0, 0.0, 10.0, 0.0], atol=1e-9)
    # Pair (3, 4) moves 1 m along world x, which the rotated camera sees as R^T t: |R^T t - t| = 2 sin(5 deg).
    np.testing.assert_allclose(r.trans_errors, [0.0, 0.0, 0.0, 2 * np.sin(np.radians(5.0))], atol=1e-12)


def test_rpe_needs_enough_poses() -> None:
    T = random_trajectory(np.random.default_rng(6), 3)
    with pytest.raises(EvaluationError, match="delta 3"):
        relative_pose_error(T, T, delta=3)


def test_trajectory_length_known_answer() -> None:
    T = make_se3(np.tile(np.eye(3), (3, 1, 1)), [[0, 0, 0], [3, 4, 0], [3, 4, 1.0]])
    assert trajectory_length(T) == pytest.approx(6.0)


# --- evo cross-check ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ate_and_rpe_agree_with_evo(seed: int) -> None:
    from evo import main_ape, main_rpe
    from evo.core import metrics as evo_metrics
    from evo.core import trajectory as evo_traj

    rng = np.random.default_rng(100 + seed)
    n = 80
    T_gt = random_trajectory(rng, n)
    T_pred = perturb(rng, random_sim3(rng).apply_poses(T_gt), sigma_t=0.05, sigma_r=0.02)
    stamps = np.arange(n) * 0.1
    ref = evo_traj.PoseTrajectory3D(poses_se3=list(T_gt), timestamps=stamps)
    est = evo_traj.PoseTrajectory3D(poses_se3=list(T_pred), timestamps=stamps)
    PR = evo_metrics.PoseRelation
    for align, kw in (("sim3", {"align": True, "correct_scale": True}), ("se3", {"align": True}), ("none", {})):
        ape = main_ape.ape(copy.deepcopy(ref), copy.deepcopy(est), PR.translation_part, **kw)
        ours = absolute_trajectory_error(T_pred, T_gt, align)  # type: ignore[arg-type]
        for key in ("rmse", "mean", "median", "max", "std"):
            assert ours.stats[key] == pytest.approx(ape.stats[key], rel=1e-6, abs=1e-9), (align, key)
        for delta, all_pairs in ((1, False), (4, False), (4, True)):
            common = {"delta": delta, "delta_unit": evo_metrics.Unit.frames, "all_pairs": all_pairs, **kw}
            rpe_t = main_rpe.rpe(copy.deepcopy(ref), copy.deepcopy(est), PR.translation_part, **common)
            rpe_r = main_rpe.rpe(copy.deepcopy(ref), copy.deepcopy(est), PR.rotation_angle_deg, **common)
            ours_r = relative_pose_error(T_pred, T_gt, delta, align, all_pairs=all_pairs)  # type: ignore[arg-type]
            assert len(ours_r.pairs) == len(rpe_t.np_arrays["error_array"])
            for key in ("rmse", "mean", "median", "max"):
                assert ours_r.trans_stats[key] == pytest.approx(rpe_t.stats[key], rel=1e-6, abs=1e-9)
                assert ours_r.rot_stats[key] == pytest.approx(rpe_r.stats[key], rel=1e-6, abs=1e-7)
