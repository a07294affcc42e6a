"""Progress feedback that suits where the output goes: a tqdm bar on a terminal, log lines everywhere else.

A redrawn bar written into a file or a CI log becomes a long line of carriage returns spliced into the log records;
so when stderr is not a terminal (or `RECON_PROGRESS=log`), `progress(...)` gives a tqdm whose status is a log
line every `log_interval_s` seconds and one at the end, and nothing else. `RECON_PROGRESS=off` silences both.
On a terminal the bar is drawn and log records are routed around it (tqdm's logging_redirect_tqdm).

    for frame in progress(frames, total=len(frames), desc="rendering", unit="frame"):
        ...
    hf_hub_download(..., tqdm_class=tqdm_class())   # downloads get the same treatment
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

logger = logging.getLogger("recon.progress")


def mode() -> str:
    """"bar" (stderr is a terminal), "log" (it is not) or "off", unless RECON_PROGRESS says otherwise."""
    forced = os.environ.get("RECON_PROGRESS", "").strip().lower()
    if forced in ("bar", "log", "off"):
        return forced
    return "bar" if sys.stderr.isatty() else "log"


class LogTqdm(tqdm):
    """A tqdm that draws nothing: its status line goes to the `recon.progress` logger at most every
    `log_interval_s` seconds, plus a last one when it closes (so a file log gets a handful of lines, not redraws)."""

    log_interval_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["file"] = io.StringIO()  # tqdm's own writes go nowhere
        kwargs.pop("dynamic_ncols", None)
        kwargs.setdefault("mininterval", 1.0)
        self._last_logged: float | None = None
        self._logged_n = -1
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now = time.monotonic()
        if self.disable or self._logged_n == self.n or (
                self._last_logged is not None and now - self._last_logged < self.log_interval_s):
            return True
        self._emit(now)
        return True

    def _emit(self, now: float) -> None:
        self._last_logged, self._logged_n = now, self.n
        logger.info("%s", self.format_meter(**{**self.format_dict, "ncols": 0}).strip())

    def close(self) -> None:
        if not self.disable and self._logged_n != self.n:
            self._emit(time.monotonic())
        super().close()


def tqdm_class() -> type[tqdm] | None:
    """The tqdm class for libraries that accept one (huggingface_hub downloads): LogTqdm off a terminal, None
    (the library's own bar) on one. With RECON_PROGRESS=off a disabled tqdm."""
    m = mode()
    if m == "bar":
        return None
    if m == "off":
        class _Off(tqdm):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        return _Off
    return LogTqdm


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool = False, **kwargs: Any) -> tqdm:
    """A progress bar or logged progress (see the module doc) over `iterable`, or to `update()` by hand."""
    m = mode()
    if m == "bar":
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                    mininterval=0.5, **kwargs)
    return LogTqdm(iterable, total=total, desc=desc, unit=unit, disable=disable or m == "off", **kwargs)


@contextlib.contextmanager
def logs_around_bar() -> Iterator[None]:
    """Route log records around a terminal bar while one may be drawn (a no-op when progress is logged)."""
    if mode() != "bar":
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield
