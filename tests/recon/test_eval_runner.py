"""evaluate_run() and `recon eval`: association, JSON output, files written and read back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main
from recon.eval import EvaluationError, evaluate_run
from recon.geometry import Sim3, make_se3, so3_exp
from recon.io.trajectory import write_tum_trajectory
from recon.types import Trajectory


def _gt(n: int = 40) -> Trajectory:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 4 * np.pi, n)
    pos = np.stack([np.cos(t), np.sin(t), 0.1 * t], axis=1)  # helix: not degenerate
    R = np.stack([so3_exp(np.array([0.0, 0.0, ti])) for ti in t])
    T = make_se3(R, pos + rng.normal(scale=1e-3, size=pos.shape))
    return Trajectory(np.arange(n, dtype=np.int64) * 33_333_333 + 1_000_000_000, T)


def test_evaluate_run_scaled_copy_with_clock_jitter() -> None:
    gt = _gt()
    S = Sim3(0.25, so3_exp(np.array([0.3, -0.2, 0.1])), np.array([1.0, 2.0, 3.0]))
    t_pred = gt.t_ns + 2_000_000  # 2 ms later, within the default 10 ms
    pred = (t_pred[::2], S.apply_poses(gt.T_world_cam)[::2])
    m = evaluate_run(pred, gt)
    assert m["num_matched"] == 20 and m["num_gt_poses"] == 40
    assert m["ate_rmse"] < 1e-9 and m["rpe_trans_rmse"] < 1e-9
    assert m["scale"] == pytest.approx(4.0)
    assert m["max_abs_dt_s"] == pytest.approx(0.002)
    json.dumps(m, allow_nan=False)  # JSON-serialisable, no NaN
    m_se3 = evaluate_run(pred, gt, align="se3")
    assert m_se3["ate_rmse"] > 0.1 and m_se3["scale"] == 1.0


def test_evaluate_run_noise_percent_of_length_and_duplicates() -> None:
    gt = _gt()
    rng = np.random.default_rng(1)
    T = gt.T_world_cam.copy()
    T[:, :3, 3] += rng.normal(scale=0.01, size=(len(T), 3))
    # A backend revised frame 5: the later line wins.
    t_pred = np.concatenate([gt.t_ns, gt.t_ns[5:6]])
    T_pred = np.concatenate([T, gt.T_world_cam[5:6]])
    T_pred[5, :3, 3] += 100.0  # the first estimate of frame 5 is wrong, its update is exact
    m = evaluate_run((t_pred, T_pred), gt, align="se3")
    assert m["num_matched"] == 40
    assert 0.005 < m["ate_rmse"] < 0.03
    assert m["ate_pct_of_length"] == pytest.approx(100 * m["ate_rmse"] / m["trajectory_length"])
    assert m["trajectory_length"] > 2 * 2 * np.pi


def test_evaluate_run_no_overlap_and_single_pose() -> None:
    gt = _gt()
    with pytest.raises(EvaluationError, match="same clock"):
        evaluate_run((gt.t_ns + 10**9 * 1000, gt.T_world_cam), gt)
    m = evaluate_run((gt.t_ns[:1], gt.T_world_cam[:1]), gt, align="none")
    assert m["num_matched"] == 1 and m["rpe_num_pairs"] == 0 and m["rpe_trans_rmse"] is None
    assert m["ate_pct_of_length"] is None


def test_recon_eval_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _gt()
    T_pred = Sim3(2.0, np.eye(3), np.zeros(3)).apply_poses(gt.T_world_cam)
    write_tum_trajectory(tmp_path / "gt.txt", gt.t_ns, gt.T_world_cam)
    write_tum_trajectory(tmp_path / "pred.tum", gt.t_ns, T_pred)
    out = tmp_path / "m" / "metrics.json"
    rc = main(["eval", str(tmp_path / "pred.tum"), str(tmp_path / "gt.txt"), "--delta", "2", "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "ATE rmse" in table and "RPE rot rmse" in table
    m = json.loads(out.read_text())
    assert m["num_matched"] == 40 and m["rpe_delta"] == 2
    assert m["scale"] == pytest.approx(0.5, rel=1e-6)
    assert m["ate_rmse"] < 1e-6  # TUM files keep 9 decimals
    assert not math.isnan(m["rpe_rot_deg_rmse"])


def test_recon_eval_cli_errors_exit_nonzero(tmp_path: Path) -> None:
    assert main(["eval", str(tmp_path / "missing.tum"), str(tmp_path / "gt.txt")]) == 1
    with pytest.raises(SystemExit):
        main(["eval", "a", "b", "--align", "sim2"])


def test_evaluate_run_agrees_with_evo_on_jittered_files(tmp_path: Path) -> None:
    """The whole path (TUM files, association with clock jitter, Sim(3) ATE and RPE) against evo's."""
    from evo import main_ape, main_rpe
    from evo.core import metrics, sync
    from evo.tools import file_interface

    gt = _gt(90)
    rng = np.random.default_rng(3)
    T_pred = Sim3(0.3, so3_exp(np.array([0.5, 0.1, -1.0])), np.array([1.0, 2.0, 3.0])).apply_poses(gt.T_world_cam)
    T_pred[:, :3, 3] += rng.normal(scale=0.01, size=(len(T_pred), 3))
    t_pred = gt.t_ns[::3] + rng.integers(-3_000_000, 3_000_000, size=30)
    write_tum_trajectory(tmp_path / "gt.txt", gt.t_ns, gt.T_world_cam)
    write_tum_trajectory(tmp_path / "pred.txt", t_pred, T_pred[::3])
    m = evaluate_run(tmp_path / "pred.txt", tmp_path / "gt.txt")

    ref, est = sync.associate_trajectories(file_interface.read_tum_trajectory_file(tmp_path / "gt.txt"),
                                           file_interface.read_tum_trajectory_file(tmp_path / "pred.txt"))
    ape = main_ape.ape(ref, est, metrics.PoseRelation.translation_part, align=True, correct_scale=True)
    rpe = main_rpe.rpe(ref, est, metrics.PoseRelation.translation_part, delta=1, delta_unit=metrics.Unit.frames,
                       align=True, correct_scale=True)
    assert m["num_matched"] == 30
    assert m["ate_rmse"] == pytest.approx(ape.stats["rmse"], rel=1e-6)
    assert m["ate_max"] == pytest.approx(ape.stats["max"], rel=1e-6)
    assert m["rpe_trans_rmse"] == pytest.approx(rpe.stats["rmse"], rel=1e-6)
