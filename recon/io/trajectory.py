"""TUM trajectory files: one pose per line, `timestamp tx ty tz qx qy qz qw` (seconds; xyzw quaternion).

The pose is camera-to-world (`T_world_cam`), as in the TUM RGB-D benchmark's groundtruth.txt.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np

from recon.errors import SequenceError
from recon.geometry.transforms import make_se3, quat_xyzw_to_rotmat, rotmat_to_quat_xyzw


def seconds_to_ns(text: str) -> int:
    """Exact integer nanoseconds from a decimal seconds string ("1305031102.175304" -> 1305031102175304000).

    Decimal arithmetic, because parsing through float64 loses up to ~100 ns at present-day epoch times.
    """
    try:
        return int((Decimal(text.strip()) * 1_000_000_000).to_integral_value())
    except InvalidOperation as e:
        raise ValueError(f"not a timestamp: {text!r}") from e


def read_tum_trajectory(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM file; returns (t_ns int64 [N], T_world_cam float64 [N,4,4]). Comment lines start with #."""
    path = Path(path)
    rows, stamps = [], []
    try:
        text = path.read_text()
    except OSError as e:
        raise SequenceError(f"cannot read trajectory {path}: {e}") from e
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 8:
            raise SequenceError(f"{path}:{lineno}: expected 'timestamp tx ty tz qx qy qz qw', got {len(parts)}")
        try:
            rows.append([float(p) for p in parts[1:]])
            stamps.append(seconds_to_ns(parts[0]))
        except ValueError as e:
            raise SequenceError(f"{path}:{lineno}: not a number: {line!r}") from e
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4, 4))
    data = np.asarray(rows, dtype=np.float64)
    t_ns = np.asarray(stamps, dtype=np.int64)
    T = make_se3(quat_xyzw_to_rotmat(data[:, 3:7]), data[:, 0:3])
    return t_ns, T


def write_tum_trajectory(path: str | Path, t_ns: np.ndarray, T_world_cam: np.ndarray) -> None:
    """Write poses in TUM format (timestamps in seconds with nanosecond precision)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    T = np.asarray(T_world_cam, dtype=np.float64).reshape(-1, 4, 4)
    q = rotmat_to_quat_xyzw(T[:, :3, :3])
    with path.open("w") as f:
        f.write("# timestamp tx ty tz qx qy qz qw (T_world_cam)\n")
        for ti, Ti, qi in zip(np.asarray(t_ns, dtype=np.int64), T, q, strict=True):
            sec, nsec = divmod(int(ti), 1_000_000_000)
            tx, ty, tz = Ti[:3, 3]
            f.write(f"{sec}.{nsec:09d} {tx:.9f} {ty:.9f} {tz:.9f} {qi[0]:.9f} {qi[1]:.9f} {qi[2]:.9f} {qi[3]:.9f}\n")
