"""Feedback and manners: progress that logs lines instead of redrawing a bar off a terminal, one line per download
retry, OpenCV's own warnings routed through logging, and `--help` texts that list the choices."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recon.cli import build_parser
from recon.errors import WeightsNotFoundError


def test_progress_off_a_terminal_is_a_few_log_lines(tmp_path: Path) -> None:
    """`recon synth` with stderr to a file (as in CI or `> log 2>&1`): progress lines in the log, no carriage
    returns from bar redraws spliced into it."""
    log = tmp_path / "synth.log"
    env = {**os.environ, "RECON_PROGRESS": ""}  # decided by the stream, which is a file here
    with log.open("w") as f:
        subprocess.run([sys.executable, "-m", "recon.cli", "synth", str(tmp_path / "seq"), "--frames", "6",
                        "--width", "32", "--height", "24", "--supersample", "1"], stdout=f, stderr=f, check=True,
                       env=env, timeout=300)
    text = log.read_text()
    assert "\r" not in text
    lines = [x for x in text.splitlines() if "recon.progress" in x]
    assert lines and "rendering seq" in lines[-1] and "6/6" in lines[-1]


def test_download_retries_are_one_line_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> None:
    """A real hf_hub_download against a closed local port: huggingface_hub's retries (two records each, printed
    twice through its own handler and ours) become one line per retry naming the file, the error and the wait."""
    import socket

    import huggingface_hub.constants
    import huggingface_hub.utils._http as hf_http

    from recon.models import weights

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed}")
    monkeypatch.setattr(hf_http.time, "sleep", lambda s: None)  # skip the backoff's waits, keep its logic
    capfd.readouterr()
    with caplog.at_level(logging.WARNING), pytest.raises(WeightsNotFoundError):
        weights.download_weights("pi3")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert lines and all(m.startswith("download of model.safetensors failed: ") for m in lines), lines
    assert [m.split("; retry ")[1].split(" of")[0] for m in lines] == [str(i) for i in range(1, len(lines) + 1)]
    assert "thrown while requesting" not in capfd.readouterr().err  # the library's own handler printed nothing


def test_opencv_warnings_do_not_precede_the_camera_error() -> None:
    r = subprocess.run([sys.executable, "-m", "recon.cli", "live", "--camera", "57"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1
    assert "cannot open camera '57'" in r.stderr
    assert "[ WARN" not in r.stderr and "cap_v4l" not in r.stderr


def test_help_lists_choices_and_reads_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    top = parser.format_help()
    assert "Examples:" in top and "thin layer" not in top and "recon calib" in top and "--export colmap" in top
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("geometric (no weights needed)", "infinitevggt", "{full,tiny}", "{pi3,vggt}", "[laser]",
                     "{auto,fp32,bf16,fp16}", "colmap, nerfstudio, mesh, mcap", "ROS bag", "web[:[HOST:]PORT[:GRPC]]"):
        assert expected in text, expected
