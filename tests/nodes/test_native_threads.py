"""`recon node recon --native-threads 1` runs each OpenCV and BLAS call on the session's own thread
(recon.utils.threads); by default the libraries keep their own defaults; the node's status says which."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.nodes.node_support import NodeProcess, status, tcp, wait_for, zmq_context

# The libraries' defaults made machine-independent for BLAS (OpenBLAS reads OPENBLAS_NUM_THREADS at load).
ENV = {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}


def _node_threads(tmp_path: Path, *extra: str) -> dict:
    ep_in, ep_out, ep_ctl = tcp(), tcp(), tcp()
    args = ["recon", "--bind", ep_in, "--publish", ep_out, "--control", ep_ctl, "--backend", "geometric",
            "--no-state", *extra]
    with zmq_context() as ctx, NodeProcess(args, tmp_path / f"recon{len(extra)}.log", env=ENV) as node:
        reply = wait_for(lambda: node.alive() and status(ctx, ep_ctl), 60, "the node's status")
        assert node.terminate() == 0, node.log()
    return reply["native_threads"]


@pytest.mark.timeout(150)
def test_native_threads_sets_the_library_thread_pools_and_the_default_leaves_them(tmp_path: Path) -> None:
    assert _node_threads(tmp_path, "--native-threads", "1") == {"opencv": 1, "blas": [1]}
    opencv_default = int(subprocess.run([sys.executable, "-c", "import cv2; print(cv2.getNumThreads())"],
                                        capture_output=True, text=True, check=True).stdout)
    assert _node_threads(tmp_path) == {"opencv": opencv_default, "blas": [2]}
