"""Thread pools of the native libraries a CPU backend calls (OpenCV, the OpenBLAS of numpy and scipy).

Why: a reconstruction node runs one session per stream, each on its own thread; when each call into OpenCV or
BLAS also fans out over every core, four sessions on two cores run some twenty threads. One session alone on
the sample (200 frames, 640x480) with one thread per call ran 3-6 % slower in wall time and used 45 % less CPU.
In the node the evidence is mixed (`recon bench live`, 4 cameras x 30 fps, 60 s, docs/benchmarks.md): one round
showed 46-48 against 62-91 ms of CPU per processed frame, an interleaved round against the previous tree showed
no difference (40-44 ms both). So it is an option (`recon node recon --native-threads 1`), not the default.

torch's own thread pool (the learned backends) is left alone: `torch.set_num_threads` sizes it.
"""

from __future__ import annotations

import logging
from typing import Any

from recon.errors import ConfigError

logger = logging.getLogger(__name__)


def limit_native_threads(threads: int) -> dict[str, Any]:
    """Run OpenCV and the BLAS of numpy and scipy with `threads` threads per call (process-wide; a BLAS library
    loaded later keeps its default, which `native_threads()` shows); returns `native_threads()`."""
    import cv2
    import scipy.linalg  # noqa: F401 - scipy ships its own OpenBLAS: loaded now, so the limit reaches it
    from threadpoolctl import threadpool_limits

    if threads < 1:
        raise ConfigError(f"native threads must be >= 1, got {threads}")
    cv2.setNumThreads(threads)
    threadpool_limits(limits=threads, user_api="blas")
    now = native_threads()
    logger.info("native libraries: OpenCV %d thread(s), BLAS %s thread(s) per call", now["opencv"], now["blas"])
    return now


def native_threads() -> dict[str, Any]:
    """Threads per call of OpenCV and of each loaded BLAS library (by its internal API, e.g. openblas)."""
    import cv2
    from threadpoolctl import threadpool_info

    return {"opencv": cv2.getNumThreads(),
            "blas": sorted({int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"})}
