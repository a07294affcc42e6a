"""TUM trajectory files: exact nanosecond timestamps, xyzw quaternions, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recon.errors import SequenceError
from recon.geometry.transforms import make_se3, quat_xyzw_to_rotmat
from recon.io.trajectory import read_tum_trajectory, seconds_to_ns, write_tum_trajectory


def test_seconds_to_ns_is_exact() -> None:
    assert seconds_to_ns("1305031102.175304") == 1_305_031_102_175_304_000
    assert seconds_to_ns("1700000000.123456789") == 1_700_000_000_123_456_789
    assert seconds_to_ns("-0.25") == -250_000_000
    assert seconds_to_ns("7") == 7_000_000_000
    assert seconds_to_ns("1e-3") == 1_000_000
    with pytest.raises(ValueError):
        seconds_to_ns("1.2.3")


def test_round_trip_keeps_nanoseconds_and_poses(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t_ns = 1_700_000_000_000_000_000 + np.cumsum(rng.integers(1, 50_000_000, size=20))
    q = rng.normal(size=(20, 4))
    T = make_se3(quat_xyzw_to_rotmat(q), rng.normal(size=(20, 3)))
    write_tum_trajectory(tmp_path / "t.tum", t_ns, T)
    t_back, T_back = read_tum_trajectory(tmp_path / "t.tum")
    np.testing.assert_array_equal(t_back, t_ns)
    np.testing.assert_allclose(T_back, T, atol=1e-8)


def test_malformed_lines_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("# header\n1.0 0 0 0 0 0 0 1\n2.0 0 0 0 0 0 1\n")
    with pytest.raises(SequenceError, match=r"bad.txt:3"):
        read_tum_trajectory(path)
    path.write_text("1.0 0 0 x 0 0 0 1\n")
    with pytest.raises(SequenceError, match="not a number"):
        read_tum_trajectory(path)
