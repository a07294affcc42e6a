"""Place recognition without downloaded weights: a bag of binary words over ORB descriptors.

Why this method: DBoW2 (ORB-SLAM's place recogniser) shows that a vocabulary of binary words with tf-idf
weights and an L1 score finds revisits reliably from ORB descriptors alone, but its vocabulary is a
file trained offline on other imagery. Here the vocabulary is trained from the sequence itself (k-majority
clustering of the keyframes' descriptors, Grana et al. 2013: k-means where the centre of a cluster is the
bitwise majority, seeded with k-means++), so nothing is downloaded and the words fit the scene being mapped.
It is re-trained as the map grows (each time the number of keyframes doubles, up to
`MapOptions.vocabulary_until`), which re-assigns the words of every stored keyframe. Training is a generator
that does its Hamming distances in chunks and yields the work of each chunk (descriptor-word comparisons), so
the map layer spreads it over the stream's steps instead of stalling one of them (`train` runs it to the end).

Hamming distances are computed as matrix products of unpacked bits (`|a| + |b| - 2 a.b`), so clustering and
word assignment run in numpy without a per-descriptor loop.
"""

from __future__ import annotations

import logging
from collections.abc import Generator

import numpy as np
from scipy import sparse

logger = logging.getLogger(__name__)


def _bits(desc_n32: np.ndarray) -> np.ndarray:
    """uint8 [n,32] descriptors -> float32 [n,256] bits."""
    return np.unpackbits(np.ascontiguousarray(desc_n32, np.uint8), axis=1).astype(np.float32)


def hamming_to(bits_a: np.ndarray, bits_b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances [na, nb] between two sets of unpacked bit vectors."""
    return bits_a.sum(1)[:, None] + bits_b.sum(1)[None, :] - 2.0 * (bits_a @ bits_b.T)


def nearest_steps(bits: np.ndarray, centres: np.ndarray,
                  budget: int) -> Generator[int, None, tuple[np.ndarray, np.ndarray]]:
    """Nearest centre (int32 [n]) and its distance (float32 [n]) of each bit vector, in chunks of at most
    `budget` comparisons (at least one row); yields each chunk's comparisons after doing it."""
    rows = max(1, int(budget) // max(1, len(centres)))
    index = np.empty(len(bits), np.int32)
    dist = np.empty(len(bits), np.float32)
    for i in range(0, len(bits), rows):
        d = hamming_to(bits[i:i + rows], centres)
        index[i:i + rows] = np.argmin(d, axis=1)
        dist[i:i + rows] = d[np.arange(len(d)), index[i:i + rows]]
        yield len(d) * len(centres)
    return index, dist


class BinaryVocabulary:
    """Flat vocabulary of `k` binary words (centres are 256-bit majority vectors).

    Args:
        k: number of words (fewer when there are fewer distinct training descriptors).
        iterations: k-majority iterations.
        seed: initialisation seed (training is deterministic for a given input).
        max_train: descriptors sampled for training (evenly over the keyframes, deterministic).
    """

    def __init__(self, k: int = 256, iterations: int = 6, seed: int = 0, max_train: int = 6000) -> None:
        self.k = int(k)
        self.max_train = int(max_train)
        self.iterations = int(iterations)
        self.seed = int(seed)
        self.centres: np.ndarray | None = None  # float32 [k,256] bits

    @property
    def trained(self) -> bool:
        return self.centres is not None

    @property
    def size(self) -> int:
        return 0 if self.centres is None else len(self.centres)

    def train(self, descriptors: np.ndarray) -> None:
        """k-majority clustering of uint8 [n,32] descriptors, all at once (see `train_steps`)."""
        steps = self.train_steps(descriptors, budget=1 << 62)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                self.centres = done.value
                return

    def train_steps(self, descriptors: np.ndarray, budget: int) -> Generator[int, None, np.ndarray]:
        """k-majority clustering of uint8 [n,32] descriptors (k-means++-like seeding on Hamming distance).

        Yields the work of each chunk (descriptor-word comparisons, at most `budget`, or one descriptor's when
        there are more words than that) and returns the centres (float32 [k,256] bits) without setting them,
        so the caller decides when the new words replace the old ones. Deterministic for a given input."""
        n = len(descriptors)
        if n == 0:
            raise ValueError("cannot train a vocabulary without descriptors")
        rng = np.random.default_rng(self.seed)
        if n > self.max_train:  # words are well placed long before every descriptor is seen
            descriptors = descriptors[np.sort(rng.choice(n, self.max_train, replace=False))]
            n = self.max_train
        bits = _bits(descriptors)
        k = min(self.k, n)
        centres = yield from self._seed(bits, k, rng, budget)
        for _ in range(self.iterations):
            assign, _ = yield from nearest_steps(bits, centres, budget)
            counts = np.bincount(assign, minlength=k).astype(np.float32)
            members = sparse.csr_matrix((np.ones(n, np.float32), (assign, np.arange(n))), shape=(k, n))
            sums = np.asarray(members @ bits)
            filled = counts > 0
            centres = centres.copy()
            centres[filled] = (sums[filled] / counts[filled, None] >= 0.5).astype(np.float32)
            empty = np.flatnonzero(~filled)
            if len(empty):
                centres[empty] = bits[rng.choice(n, size=len(empty), replace=False)]
        return centres

    @staticmethod
    def _seed(bits: np.ndarray, k: int, rng: np.random.Generator,
              budget: int) -> Generator[int, None, np.ndarray]:
        """k-means++ seeding on Hamming distance (Arthur & Vassilvitskii 2007): spread-out starting words, so
        distinct clusters do not share one word while another is split. k/16 seeds are drawn per round (one
        matrix product per round instead of one per seed; with many words a rare double pick costs little)."""
        batch = max(1, k // 16)
        chosen = [int(rng.integers(len(bits)))]
        _, dist = yield from nearest_steps(bits, bits[chosen], budget)
        while len(chosen) < k:
            w = dist.astype(np.float64) ** 2
            total = w.sum()
            m = min(batch, k - len(chosen))
            if total <= 0:  # fewer distinct descriptors than words: the rest are duplicates anyway
                new = rng.choice(len(bits), size=m, replace=False)
            else:
                new = rng.choice(len(bits), size=min(m, int(np.count_nonzero(w))), replace=False, p=w / total)
            chosen.extend(int(i) for i in new)
            _, d = yield from nearest_steps(bits, bits[new], budget)
            dist = np.minimum(dist, d)
        return bits[chosen[:k]].copy()

    @staticmethod
    def _nearest(bits: np.ndarray, centres: np.ndarray) -> np.ndarray:
        steps = nearest_steps(bits, centres, budget=8192 * max(1, len(centres)))
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value[0]

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """Word index (int32 [n]) of each uint8 [n,32] descriptor."""
        if self.centres is None:
            raise ValueError("vocabulary is not trained")
        return self._nearest(_bits(descriptors), self.centres)

    def words_steps(self, descriptors: np.ndarray, centres: np.ndarray,
                    budget: int) -> Generator[int, None, np.ndarray]:
        """`words` under other centres (a vocabulary being trained), in chunks (see `nearest_steps`)."""
        index, _ = yield from nearest_steps(_bits(descriptors), centres, budget)
        return index


class PlaceIndex:
    """Bag-of-words vectors of the keyframes and DBoW2's L1 similarity between them.

    Word weights are tf-idf with the idf counted over the keyframes held, recomputed on each query (a
    word in every keyframe carries no information about place). A keyframe without words (its features were
    dropped from a bounded live map, `drop`) holds no vector: it scores -1 and does not count in the idf.
    """

    def __init__(self) -> None:
        self.histograms: list[np.ndarray | None] = []  # per keyframe: word counts (float32 [k]), None if dropped
        self.k = 0

    def reset(self, k: int) -> None:
        self.histograms = []
        self.k = int(k)

    def add(self, words: np.ndarray) -> None:
        """The next keyframe's words (none: a keyframe whose features were dropped)."""
        self.histograms.append(np.bincount(words, minlength=self.k).astype(np.float32)[: self.k] if len(words)
                               else None)

    def drop(self, i: int) -> None:
        """Forget keyframe `i`'s vector (it keeps its position, so indices stay those of the keyframes)."""
        if 0 <= i < len(self.histograms):
            self.histograms[i] = None

    def __len__(self) -> int:
        return len(self.histograms)

    def scores(self, query: int) -> np.ndarray:
        """Similarity in [0, 1] of keyframe `query` to every keyframe (1 - |v_q - v_i|_1 / 2, L1-normalised);
        -1 for keyframes without a vector (the query's own dropped too: all -1)."""
        out = np.full(len(self.histograms), -1.0, np.float32)
        held = [i for i, h in enumerate(self.histograms) if h is not None]
        if query not in set(held):
            return out
        H = np.stack([self.histograms[i] for i in held])
        df = np.count_nonzero(H > 0, axis=0)
        idf = np.log(len(H) / np.maximum(df, 1)).astype(np.float32)
        V = H / np.maximum(H.sum(1, keepdims=True), 1.0) * idf
        V /= np.maximum(V.sum(1, keepdims=True), 1e-12)
        out[held] = 1.0 - 0.5 * np.abs(V - V[held.index(query)]).sum(1)
        return out
