"""Monocular tracking across the frames a busy live stream skips (issue 10's tail, issue 13's fast motion).

A node serving several live cameras processes every 7th-15th capture of each; at 640x480 that is flow of tens of
pixels per processed frame, beyond what three pyramid levels of a 21 px KLT window follow. Each loss costs a
relocalisation, the longest kind of step, which makes the next gap longer still.
"""

from __future__ import annotations

from recon.backends import create_backend
from recon.commands.bench_live import sample_frames
from recon.types import Frame


def test_every_twelfth_frame_at_640x480_stays_tracked() -> None:
    images, K = sample_frames(640, 480)  # the bundled sample, forward then backward, as `recon bench live` plays it
    backend = create_backend("geometric", mode="mono")
    results = {}
    for i in range(100):
        for r in backend.step(Frame("cam", i, i * 33_333_333, images[(i * 12) % len(images)], K=K)):
            results[r.seq] = r
    for r in backend.flush():
        results[r.seq] = r
    extra = backend.stats().extra
    assert sorted(results) == list(range(100))
    # Measured with three levels: 20 losses and 130 of 150 frames tracked; with four: 0 losses, 150 of 150.
    assert extra["tracking_losses"] <= 2, extra["tracking_losses"]
    assert sum(r.tracked for r in results.values()) >= 97
