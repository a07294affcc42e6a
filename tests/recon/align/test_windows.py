"""Window schedule: stride, short trailing window, incremental scheduler equal to the batch schedule."""

import pytest

from recon.align.windows import WindowScheduler, window_ranges
from recon.errors import ConfigError


def test_ranges_match_reference_rule() -> None:
    # 16 frames, W=6, O=2 (the laser_stream fixture): [0-5], [4-9], [8-13], [12-15] (short, has new frames).
    assert window_ranges(16, 6, 2) == [(0, 6), (4, 10), (8, 14), (12, 16)]
    # A trailing window with only overlap frames is dropped.
    assert window_ranges(14, 6, 2) == [(0, 6), (4, 10), (8, 14)]
    assert window_ranges(3, 6, 2) == [(0, 3)]


@pytest.mark.parametrize(("n", "w", "o"), [(16, 6, 2), (14, 6, 2), (40, 20, 5), (7, 3, 1), (1, 4, 2), (25, 20, 5)])
def test_incremental_scheduler_equals_batch(n: int, w: int, o: int) -> None:
    sched: WindowScheduler[int] = WindowScheduler(w, o)
    windows = [win for i in range(n) if (win := sched.push(i)) is not None]
    tail = sched.flush()
    if tail is not None:
        windows.append(tail)
    assert [(win[0], win[-1] + 1) for win in windows] == window_ranges(n, w, o)
    # Every frame is new in exactly one window.
    new = [f for k, win in enumerate(windows) for f in (win if k == 0 else win[o:])]
    assert new == list(range(n))


def test_bad_schedule_is_refused() -> None:
    with pytest.raises(ConfigError):
        WindowScheduler(5, 5)
    with pytest.raises(ConfigError):
        window_ranges(10, 4, 0)
