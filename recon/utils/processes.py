"""Stopping child processes we started: SIGTERM, a grace period, then SIGKILL, and always reaped."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, grace_s: float = 10.0) -> int | None:
    """Terminate `process` (if still running), kill it after `grace_s`, wait for it; returns its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
