"""`recon bench transport` end to end on unix sockets: a real node process, a real imagezmq hub process, tiny
frames, one short round; the benchmark's figures come out and its private socket folder is gone afterwards."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from recon.commands import bench_transport

pytestmark = pytest.mark.timeout(240)


def test_the_benchmark_runs_both_systems_over_ipc_and_removes_its_socket_folder(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = argparse.Namespace(duration=0.3, rounds=1, sizes="16x12", streams="1", encodings="raw", window=4,
                              subscriber=False, transport="ipc", json=str(out))
    folders_before = list(bench_transport._FOLDERS)
    assert bench_transport.run(args) == 0
    rows = json.loads(out.read_text())["rounds"]
    assert sorted(r["system"] for r in rows) == ["imagezmq", "recon window 1", "recon window 4"]
    for r in rows:
        assert r["frames"] > 0 and r["fps"] > 0, r
    recon = [r for r in rows if r["system"].startswith("recon")]
    assert all(r["extra"]["rejected"] == 0 and r["extra"]["node_drops"] == 0 for r in recon)
    made = bench_transport._FOLDERS[len(folders_before):]
    assert len(made) == 3  # one private folder per system run
    assert not any(os.path.exists(f) for f in made)
