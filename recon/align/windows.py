"""Overlapping window schedule for window-based streaming (LASER): window W, overlap O, stride S = W - O.

Windows start at frame 0 and advance by S; a trailing window is kept only when it holds at least one new frame
(more than O frames), so the last window may be short (neu-vi/LASER@987d674 inference_utils.py:18-38).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from recon.errors import ConfigError

T = TypeVar("T")


def window_ranges(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the windows over a sequence of known length."""
    _check(window, overlap)
    stride = window - overlap
    ranges = []
    start = 0
    while start < num_frames:
        end = min(start + window, num_frames)
        if start > 0 and end - start <= overlap:
            break
        ranges.append((start, end))
        if end == num_frames:
            break
        start += stride
    return ranges


def _check(window: int, overlap: int) -> None:
    if window < 2 or overlap < 1 or overlap >= window:
        raise ConfigError(f"window scheduling needs window >= 2 and 1 <= overlap < window, got {window}/{overlap}")


@dataclass
class WindowScheduler(Generic[T]):
    """Incremental version of `window_ranges` for a live stream: push items, get full windows back.

    Only the current window's items are held (bounded memory); the last O items of an emitted window stay as
    the head of the next one.
    """

    window: int
    overlap: int
    _items: list[T] = field(default_factory=list)
    _emitted_any: bool = False

    def __post_init__(self) -> None:
        _check(self.window, self.overlap)

    def push(self, item: T) -> list[T] | None:
        """Add one item; returns the window's items when a window is complete."""
        self._items.append(item)
        if len(self._items) < self.window:
            return None
        out = list(self._items)
        self._items = self._items[-self.overlap:]
        self._emitted_any = True
        return out

    def flush(self) -> list[T] | None:
        """The trailing short window at end of stream, if it holds a new item."""
        items, self._items = self._items, []
        if not items:
            return None
        if self._emitted_any and len(items) <= self.overlap:
            return None
        self._emitted_any = True
        return items

    def reset(self) -> None:
        self._items = []
        self._emitted_any = False

    def __len__(self) -> int:
        return len(self._items)


