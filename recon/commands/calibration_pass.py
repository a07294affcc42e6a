"""`recon replay`'s calibration pass: a monocular sequence without intrinsics is run through the geometric backend
once to self-calibrate the focal length, then reconstructed with that focal length given.

Why: while the backend refines a focal length that starts from a guess (0.8 x the image width), the map it tracks
is built at every intermediate value; on fast footage the estimate wanders by 20-50 % before it settles, and the
scale drift that leaves stays in the trajectory even when the final focal length is right. Twelve degraded
renders (docs/benchmarks.md, 2026-12-06): one pass ended within 2 % ATE on 9, the second pass with the first
pass's focal length on 11 (3x walk 12.6 -> 1.0 %, 2x loop 8.6 -> 1.0 %), for twice the time. A recorded sequence
can be read twice; a live camera cannot, so `recon live` keeps the one-pass self-calibration.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from typing import Any

import numpy as np

from recon.errors import ReconError
from recon.types import CameraInfo

logger = logging.getLogger(__name__)

SOURCE = "self-calibrated in a first pass over the sequence (bundle adjustment), then given"


def wants_calibration_pass(args: argparse.Namespace, backend_name: str, sequence: Any,
                           options: dict[str, Any]) -> bool:
    """A pass is run for `--calibration-pass auto` when the geometric backend will run monocular without K (none
    from the sequence, `--camera-info` or `--backend-opt K=...`)."""
    return (getattr(args, "calibration_pass", "off") == "auto" and backend_name == "geometric"
            and not args.distributed and getattr(sequence, "camera_info", None) is None
            and not getattr(sequence, "has_depth", False) and options.get("K") is None)


def run_calibration_pass(sequence: Any, backend: Any, *, stride: int, max_frames: int | None
                         ) -> tuple[CameraInfo | None, dict[str, Any]]:
    """The intrinsics `backend` self-calibrates over the frames the replay will read (None when it did not get
    that far: too few frames, tracking never initialised, a frame that stops the reader), and what the pass did."""
    t0 = time.perf_counter()
    frames = 0
    size = None
    try:
        for frame in itertools.islice(itertools.islice(sequence, 0, None, stride), max_frames):
            size = (frame.width, frame.height)
            backend.step(frame)
            frames += 1
        backend.flush()
    except ReconError as e:
        logger.warning("calibration pass stopped after %d frames (%s); reconstructing with the one-pass "
                       "self-calibration", frames, e)
        return None, {"frames": frames, "wall_s": round(time.perf_counter() - t0, 3), "error": str(e)}
    found = backend.stats().extra.get("intrinsics") or {}
    report = {"frames": frames, "wall_s": round(time.perf_counter() - t0, 3), "found": found}
    if size is None or not str(found.get("source", "")).startswith("self-calibrated"):
        logger.warning("calibration pass: no focal length found over %d frames (%s); reconstructing with the "
                       "one-pass self-calibration", frames, found.get("source", "no intrinsics reported"))
        return None, report
    K = np.array([[found["fx"], 0.0, found["cx"]], [0.0, found["fy"], found["cy"]], [0.0, 0.0, 1.0]])
    logger.info("calibration pass over %d frames (%.1f s): focal length %.1f px; reconstructing with it given",
                frames, report["wall_s"], found["fx"])
    return CameraInfo(size[0], size[1], K), report
