"""Frozen arrays (`recon.backends.snapshot.freeze`) are held by a snapshot without a copy; anything that could
still change is copied, so a snapshot never sees a later write."""

from __future__ import annotations

import numpy as np
import pytest

from recon.backends.snapshot import freeze, is_frozen, pack, unpack


def test_a_frozen_array_is_saved_uncopied_and_cannot_be_written() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4).copy()
    freeze(a)
    arrays: dict = {}
    tree = pack({"a": a}, arrays)
    assert any(v is a for v in arrays.values())
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    np.testing.assert_array_equal(unpack(tree, arrays)["a"], a)


def test_arrays_that_can_still_change_are_copied() -> None:
    """A writeable array, and a read-only view of a writeable one (the base can still be written), are copied:
    writing them after the snapshot leaves the snapshot as it was."""
    base = np.zeros((4, 4))
    view = base[:2]
    view.setflags(write=False)
    freeze(view)  # not owning its memory: freeze leaves it, and it does not count as frozen
    assert not is_frozen(view) and base.flags.writeable
    arrays: dict = {}
    tree = pack({"base": base, "view": view}, arrays)
    assert not any(v is base or v is view for v in arrays.values())
    base[:] = 7.0
    back = unpack(tree, arrays)
    assert float(np.abs(back["base"]).max()) == 0.0 and float(np.abs(back["view"]).max()) == 0.0


def test_a_view_of_a_frozen_array_is_frozen_too() -> None:
    a = np.ones((6, 6))
    freeze(a)
    assert is_frozen(a) and is_frozen(a[1:3]) and is_frozen(a.T)
    freeze(None)  # absent fields of a result are allowed


def test_a_live_monocular_session_freezes_what_it_keeps_for_revisions() -> None:
    """The results the monocular tracker keeps to revise (depth, confidence, point map, its own image copy) are
    frozen, so its snapshots do not copy them; the caller's frame image is left writeable."""
    from recon.backends import create_backend
    from recon.commands.bench_live import sample_frames
    from recon.types import Frame

    images, K = sample_frames(160, 120)
    backend = create_backend("geometric", mode="mono", stride=2)
    frames = [Frame("c", n, n * 33_000_000, images[n % len(images)].copy(), K=K) for n in range(12)]
    results = [r for f in frames for r in backend.step(f)]
    kept = [r for r, _, _ in backend._tracker._attached]
    assert kept, "the tracker keeps results to revise"
    for r in kept:
        assert all(is_frozen(a) for a in (r.depth, r.confidence, r.points_world, r.image))
    assert all(f.image.flags.writeable for f in frames)
    assert results
