"""Focal self-calibration on an orbit, the motion that defeats the two-view criterion (issue 13, deliver 1).

Tracks are exact projections of random points in the shared generator's room along its "orbit" trajectory
(every optical axis through one point: Sturm's degenerate configuration for focal length from two views), plus
0.3 px Gaussian noise, about the precision of KLT on sharp renders. Threshold: the issue's 5 % on the focal.
"""

from __future__ import annotations

import numpy as np
import pytest

from recon.backends.geometric.selfcalib import estimate_focal, multiview_focal

W, H = 320, 240


def _orbit_tracks(focal_ratio: float, frames: int = 60, points: int = 600, noise_px: float = 0.3
                  ) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    from datasets.synthetic import build_scene, make_trajectory

    scene = build_scene(1)
    poses = make_trajectory("orbit", scene.size, frames, 30.0, 1)
    rng = np.random.default_rng(1)
    w, d, h = scene.size
    X = np.column_stack([rng.uniform(-w / 2, w / 2, points), rng.uniform(-d / 2, d / 2, points),
                         rng.uniform(0, h, points)])
    f = focal_ratio * W
    views = []
    for T_wc in poses:
        T_cw = np.linalg.inv(T_wc)
        Xc = X @ T_cw[:3, :3].T + T_cw[:3, 3]
        uv = Xc[:, :2] / np.maximum(Xc[:, 2:], 1e-9) * f + [(W - 1) / 2, (H - 1) / 2]
        seen = (Xc[:, 2] > 0.3) & np.all((uv >= 0) & (uv < [W, H]), axis=1)
        views.append((np.flatnonzero(seen), uv[seen] + rng.normal(0, noise_px, (int(seen.sum()), 2))))
    return views, f


@pytest.mark.parametrize("focal_ratio", [0.5, 1.3], ids=["wide", "narrow"])
def test_multiview_search_calibrates_an_orbit(focal_ratio: float) -> None:
    views, f = _orbit_tracks(focal_ratio)
    est = multiview_focal(views, W, H)
    assert est.confident and est.std <= 0.02
    assert abs(est.f / f - 1) <= 0.05
    # The two-view criterion on pairs of the same tracks has no usable minimum here (measured -42 % / -78 %).
    ref = {int(i): p for i, p in zip(*views[0], strict=True)}
    pairs = []
    for k in (20, 30, 40, 59):
        common = [(ref[int(i)], p) for i, p in zip(*views[k], strict=True) if int(i) in ref]
        pairs.append((np.array([c[0] for c in common]), np.array([c[1] for c in common])))
    two_view = estimate_focal(pairs, W, H)
    assert not two_view.confident or abs(two_view.f / f - 1) > 0.05


def test_multiview_search_needs_tracks_in_three_views() -> None:
    views, _ = _orbit_tracks(0.8, frames=2)
    assert multiview_focal(views, W, H).f is None
