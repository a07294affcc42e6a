"""Layer-wise scale alignment (LSA): per-depth-layer scale corrections between adjacent windows.

After the global Sim(3), foreground and background of a new window can still be mis-scaled relative to each
other. LASER segments each depth map into "layers" (Felzenszwalb superpixels on the raw depth, merged when
adjacent segments have similar mean depth), links layers across the shared frames of two windows by mask IoU,
fits one robust scale per link, and propagates the scales forward through the new window along IoU links
between consecutive frames. Reference: neu-vi/LASER@987d674 inference_engine/utils/{lsa,depth}.py; the exact
rules are in ../shared/golden/laser_layers/README.md.

Layer ids are canonical everywhere: 0, 1, ... in order of first appearance in a row-major scan.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerConfig:
    """Knobs of the layer segmentation and linking (defaults = the reference).

    Attributes:
        felz_scale, felz_sigma, felz_min_size: skimage Felzenszwalb parameters, applied to the raw depth.
        merge_ratio: adjacent segments merge when their mean depths differ by < merge_ratio x the window's
            confident depth range.
        intra_iou: minimum IoU linking layers of consecutive frames inside a window.
        cross_iou: minimum IoU linking a previous-window layer to a new-window layer of the same frame.
        downsample: segment at 1/downsample resolution and upsample labels (1 = reference behaviour).
        workers: threads used to segment the frames of a window.
    """

    felz_scale: float = 300.0
    felz_sigma: float = 1.1
    felz_min_size: int = 500
    merge_ratio: float = 0.1
    intra_iou: float = 0.3
    cross_iou: float = 0.4
    downsample: int = 1
    workers: int = 2


@dataclass
class WindowLayers:
    """Depth layers of one window.

    Attributes:
        layers: [n,H,W] uint8 canonical layer map per frame.
        felz_labels: [n,H,W] Felzenszwalb segments before merging.
        merge_thresh: the window's merge threshold (float32).
        intra_edges: links (t, layer in t, layer in t+1, IoU) for t = 0..n-2.
    """

    layers: np.ndarray
    felz_labels: np.ndarray
    merge_thresh: np.float32
    intra_edges: list[tuple[int, int, int, np.float32]] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.layers.shape[0])

    def num_layers(self, frame: int) -> int:
        return int(self.layers[frame].max()) + 1


def canonical_labels(labels_hw: np.ndarray) -> np.ndarray:
    """Renumber labels 0.. in order of first appearance in a row-major scan."""
    flat = labels_hw.ravel()
    values, first = np.unique(flat, return_index=True)
    order = values[np.argsort(first)]
    lut = np.zeros(int(values.max()) + 1, dtype=np.int64)
    lut[order] = np.arange(len(order))
    return lut[labels_hw]


def _adjacent_pairs(labels_hw: np.ndarray) -> np.ndarray:
    """Unique unordered pairs of 4-adjacent distinct labels, [P,2]."""
    pairs = []
    for a, b in ((labels_hw[:, :-1], labels_hw[:, 1:]), (labels_hw[:-1, :], labels_hw[1:, :])):
        diff = a != b
        pairs.append(np.stack([np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])], axis=1))
    both = np.concatenate(pairs, axis=0)
    return np.unique(both, axis=0) if len(both) else both.reshape(0, 2)


def merge_segments(felz_hw: np.ndarray, depth_hw: np.ndarray, thresh: np.float32) -> np.ndarray:
    """Join 4-adjacent segments whose mean raw depths differ by < thresh (transitively); canonical output.

    Quirk kept from the reference: segment 0 (the one holding pixel (0,0)) never joins anything.
    """
    n = int(felz_hw.max()) + 1
    counts = np.bincount(felz_hw.ravel(), minlength=n)
    sums = np.bincount(felz_hw.ravel(), weights=depth_hw.ravel().astype(np.float64), minlength=n)
    means = sums / np.maximum(counts, 1)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in _adjacent_pairs(felz_hw):
        if a == 0 or b == 0 or not abs(means[a] - means[b]) < thresh:
            continue
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)])
    return canonical_labels(roots[felz_hw])


def iou_matrix(a_hw: np.ndarray, b_hw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IoU float32 [na,nb], intersection counts [na,nb]) between two label maps of one frame size."""
    na, nb = int(a_hw.max()) + 1, int(b_hw.max()) + 1
    inter = np.bincount((a_hw.ravel() * nb + b_hw.ravel()), minlength=na * nb).reshape(na, nb)
    union = np.bincount(a_hw.ravel(), minlength=na)[:, None] + np.bincount(b_hw.ravel(), minlength=nb)[None] - inter
    return inter.astype(np.float32) / union.astype(np.float32), inter


def _felzenszwalb(depth_hw: np.ndarray, cfg: LayerConfig) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    if cfg.downsample > 1:
        import cv2

        h, w = depth_hw.shape
        small = cv2.resize(depth_hw, (w // cfg.downsample, h // cfg.downsample), interpolation=cv2.INTER_AREA)
        min_size = max(1, cfg.felz_min_size // cfg.downsample**2)
        labels = felzenszwalb(small, scale=cfg.felz_scale, sigma=cfg.felz_sigma, min_size=min_size)
        labels = cv2.resize(labels.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
        return canonical_labels(labels)
    return felzenszwalb(depth_hw, scale=cfg.felz_scale, sigma=cfg.felz_sigma, min_size=cfg.felz_min_size)


def build_window_layers(depth: np.ndarray, mask: np.ndarray, cfg: LayerConfig = LayerConfig()) -> WindowLayers:
    """Segment every frame of a window into depth layers and link consecutive frames.

    Args:
        depth: [n,H,W] float32 depth of the window (after its global scale).
        mask: [n,H,W] confident pixels; they only set the merge threshold (the segmentation covers all pixels).
    """
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    confident = depth[mask]
    thresh = np.float32(cfg.merge_ratio) * (confident.max() - confident.min()) if confident.size else np.float32(0)
    thresh = np.float32(thresh)
    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        felz = list(pool.map(lambda d: _felzenszwalb(d, cfg), depth))
        layers = list(pool.map(lambda fd: merge_segments(fd[0], fd[1], thresh), zip(felz, depth, strict=True)))
    edges: list[tuple[int, int, int, np.float32]] = []
    for t in range(len(layers) - 1):
        iou, _ = iou_matrix(layers[t], layers[t + 1])
        for a, b in zip(*np.nonzero(iou >= np.float32(cfg.intra_iou)), strict=True):
            edges.append((t, int(a), int(b), iou[a, b]))
    return WindowLayers(np.stack(layers).astype(np.uint8), np.stack(felz).astype(np.uint8), thresh, edges)


@dataclass
class LayerAlignment:
    """Outcome of aligning a new window's layers to the previous window.

    Attributes:
        scale_map: [n,H,W] float32 per-pixel factor for the new window's points.
        cross_edges: (k, prev layer in prev frame W-O+k, new layer in new frame k, IoU, scale, pixels, iterates).
        cache: {(frame, layer): [(IoU, scale, kind)]} with kind 0 = direct, 1 = propagated, in append order.
        layer_scale: {(frame, layer): final factor}.
    """

    scale_map: np.ndarray
    cross_edges: list[tuple[int, int, int, np.float32, np.float32, int, np.ndarray]]
    cache: dict[tuple[int, int], list[tuple[np.float32, np.float32, int]]]
    layer_scale: dict[tuple[int, int], np.float32]


def irls_depth_scale(
    x: np.ndarray, y: np.ndarray, *, max_iters: int = 10, eps: float = 1e-8, stop_tol: float = 0.05,
    clamp_min: float = 1e-6,
) -> tuple[np.float32, np.ndarray]:
    """Robust 1-D scale s with s·x ≈ y (weights 1/|s·x - y|), in float32 numpy like the reference.

    Unlike the window scale (recon.align.window_registration.irls_scale, torch), the reference layer fit is numpy; with
    1/|r| weights the summation order shows in the last digits, so we keep numpy's pairwise sums here.
    Returns (scale, iterates [max_iters+1], value after k updates, fixed after convergence).
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    s = np.maximum(np.nanmean(y) / np.nanmean(x), np.float32(clamp_min))
    iterates = [s]
    for _ in range(max_iters):
        w = 1 / (np.abs(s * x - y) + eps)
        s_new = np.maximum(np.sum(w * x * y) / np.sum(w * x * x), np.float32(clamp_min))
        delta = abs(s_new - s)
        s = s_new
        iterates.append(s)
        if delta < stop_tol:
            break
    iterates += [s] * (max_iters + 1 - len(iterates))
    return np.float32(s), np.array(iterates, dtype=np.float32)


def _weighted_mean(entries: list[tuple[np.float32, np.float32, int]]) -> np.float32:
    iou = np.array([e[0] for e in entries], dtype=np.float32)
    scale = np.array([e[1] for e in entries], dtype=np.float32)
    return np.float32((iou * scale).sum(dtype=np.float32) / iou.sum(dtype=np.float32))


def align_layers(
    prev_depth: np.ndarray,
    prev_layers: WindowLayers,
    cur_depth: np.ndarray,
    cur_layers: WindowLayers,
    overlap: int,
    cfg: LayerConfig = LayerConfig(),
) -> LayerAlignment:
    """Per-layer scales of the new window relative to the previous one, propagated forward in time.

    Args:
        prev_depth: [W,H,W'] depth of the previous window, already globally scaled and LSA-corrected.
        prev_layers: layers of the previous window (its outgoing links of the last `overlap` frames are ignored).
        cur_depth: [n,H,W'] depth of the new window after the global Sim(3) scale.
        cur_layers: layers of the new window.
        overlap: number of shared frames O (prev frame W-O+k is new frame k).
    """
    n_prev = prev_layers.num_frames
    cache: dict[tuple[int, int], list[tuple[np.float32, np.float32, int]]] = {}
    cross: list[tuple[int, int, int, np.float32, np.float32, int, np.ndarray]] = []
    for k in range(overlap):
        pf = n_prev - overlap + k
        a_map, b_map = prev_layers.layers[pf], cur_layers.layers[k]
        iou, inter = iou_matrix(a_map, b_map)
        for a, b in zip(*np.nonzero(iou >= np.float32(cfg.cross_iou)), strict=True):
            sel = (a_map == a) & (b_map == b)
            s, iterates = irls_depth_scale(cur_depth[k][sel], prev_depth[pf][sel])
            cross.append((k, int(a), int(b), iou[a, b], s, int(inter[a, b]), iterates))
            cache.setdefault((k, int(b)), []).append((iou[a, b], s, 0))
    links_from: dict[tuple[int, int], list[tuple[int, np.float32]]] = {}
    for t, a, b, w in cur_layers.intra_edges:
        links_from.setdefault((t, a), []).append((b, w))
    for t in range(cur_layers.num_frames - 1):
        for layer in range(cur_layers.num_layers(t)):
            entries = cache.get((t, layer))
            if not entries:
                continue
            value = _weighted_mean(entries)
            for child, w in links_from.get((t, layer), []):
                cache.setdefault((t + 1, child), []).append((w, value, 1))
    scale_map = np.ones(cur_layers.layers.shape, dtype=np.float32)
    layer_scale: dict[tuple[int, int], np.float32] = {}
    for t in range(cur_layers.num_frames):
        lut = np.ones(cur_layers.num_layers(t), dtype=np.float32)
        for layer in range(len(lut)):
            entries = cache.get((t, layer))
            lut[layer] = _weighted_mean(entries) if entries else np.float32(1.0)
            layer_scale[(t, layer)] = lut[layer]
        scale_map[t] = lut[cur_layers.layers[t]]
    return LayerAlignment(scale_map, cross, cache, layer_scale)
