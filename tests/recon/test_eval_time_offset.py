"""`recon eval` with clocks that do not line up: the issue's case (a video stamped from 0 against ground truth that
starts at 1.0 s), a recording that starts part-way through the ground truth, the warning under 90 % matched, and the
matched count printed beside every figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recon.cli import main
from recon.eval import evaluate_run
from recon.eval.time_offset import estimate_time_offset
from recon.geometry import Sim3, so3_exp
from recon.io.trajectory import read_tum_trajectory, write_tum_trajectory

SAMPLE_GT = Path(__file__).resolve().parents[2] / "datasets" / "sample" / "groundtruth.txt"


@pytest.fixture(scope="module")
def gt() -> tuple[np.ndarray, np.ndarray]:
    return read_tum_trajectory(SAMPLE_GT)  # 75 poses at 30 Hz from 1.0 s (the bundled sample)


def _monocular(T: np.ndarray) -> np.ndarray:
    """An up-to-scale estimate of T: another world frame and scale, as a monocular backend reports it."""
    return Sim3(0.37, so3_exp(np.array([0.2, -0.4, 0.1])), np.array([0.5, -1.0, 2.0])).apply_poses(T)


def test_video_stamped_from_zero_is_detected_and_warned_without(gt: tuple, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    t_gt, T_gt = gt
    t_video = t_gt - t_gt[0]  # what a video reader gives: 0, 33 ms, ...
    pred = (t_video, _monocular(T_gt))
    plain = evaluate_run(pred, (t_gt, T_gt), t_offset_s=0.0)
    # Without the offset, only the overlapping 1.0 s .. 2.47 s pair up, each with the wrong pose.
    assert plain["num_matched"] < 0.9 * 75 and plain["match_warning"] and plain["ate_pct_of_length"] > 1.0
    auto = evaluate_run(pred, (t_gt, T_gt), t_offset_s="auto")
    assert auto["t_offset_detected"] and auto["t_offset_s"] == pytest.approx(1.0, abs=1e-6)
    assert auto["num_matched"] == 75 and auto["match_warning"] is None and auto["ate_rmse"] < 1e-6

    write_tum_trajectory(tmp_path / "video.tum", *pred)
    write_tum_trajectory(tmp_path / "gt.txt", t_gt, T_gt)
    assert main(["eval", str(tmp_path / "video.tum"), str(tmp_path / "gt.txt"), "--t-offset", "0"]) == 0
    table = capsys.readouterr().out
    assert "WARNING" in table and f"[{plain['num_matched']}/75 poses matched]" in table
    figure_rows = [r for r in table.splitlines() if r.startswith(("ATE", "alignment", "trajectory length"))]
    assert figure_rows and all("poses matched]" in r for r in figure_rows)
    assert all("pairs of" in r for r in table.splitlines() if r.startswith("RPE"))
    assert main(["eval", str(tmp_path / "video.tum"), str(tmp_path / "gt.txt")]) == 0
    table = capsys.readouterr().out
    assert "+1.000000 s (detected)" in table and "[75/75 poses matched]" in table and "WARNING" not in table
    assert main(["eval", str(tmp_path / "video.tum"), str(tmp_path / "gt.txt"), "--t-offset", "1.0"]) == 0
    assert "(given)" in capsys.readouterr().out


def test_recording_starting_mid_ground_truth_is_found_by_correlation(gt: tuple) -> None:
    t_gt, T_gt = gt
    # Frames 20..74 only, on a clock 12.3456 s behind: the first stamps do not correspond, the motion does.
    t_pred = t_gt[20:] - 12_345_600_000
    est = estimate_time_offset(t_pred, _monocular(T_gt[20:]), t_gt, T_gt, max_diff_ns=10_000_000)
    assert est.offset_ns == pytest.approx(12_345_600_000, abs=5_000_000)  # within the 10 ms matching window
    assert est.matched == 55
    # Aligning the first stamps also matches all 55, but with the ground truth of other frames: only the ATE tells.
    first = est.candidates["first stamps"]
    chosen = est.candidates["rotation-speed correlation"]
    assert first[1] == 55 and first[2] > 1000 * max(chosen[2], 1e-9)


def test_offset_zero_is_kept_when_clocks_agree(gt: tuple) -> None:
    t_gt, T_gt = gt
    m = evaluate_run((t_gt[::2] + 2_000_000, _monocular(T_gt[::2])), (t_gt, T_gt), t_offset_s="auto")
    assert m["t_offset_s"] == 0.0 and m["num_matched"] == 38
