"""Place recognition without downloaded weights: a bag of binary words over ORB descriptors.

Why this method: DBoW2 (ORB-SLAM's place recogniser) shows that a vocabulary of binary words with tf-idf
weights and an L1 score finds revisits reliably from ORB descriptors alone, but its vocabulary is a
file trained offline on other imagery. Here the vocabulary is trained from the sequence itself (k-majority
clustering of the keyframes' descriptors, Grana et al. 2013: k-means where the centre of a cluster is the
bitwise majority, seeded with k-means++), so nothing is downloaded and the words fit the scene being mapped.
It is re-trained as the map grows (each time the number of keyframes doubles, up to
`MapOptions.vocabulary_until`), which re-assigns the words of every stored keyframe.

Hamming distances are computed as matrix products of unpacked bits (`|a| + |b| - 2 a.b`), so clustering and
word assignment run in numpy without a per-descriptor loop.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import sparse

logger = logging.getLogger(__name__)


def _bits(desc_n32: np.ndarray) -> np.ndarray:
    """uint8 [n,32] descriptors -> float32 [n,256] bits."""
    return np.unpackbits(np.ascontiguousarray(desc_n32, np.uint8), axis=1).astype(np.float32)


def hamming_to(bits_a: np.ndarray, bits_b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances [na, nb] between two sets of unpacked bit vectors."""
    return bits_a.sum(1)[:, None] + bits_b.sum(1)[None, :] - 2.0 * (bits_a @ bits_b.T)


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
        """k-majority clustering of uint8 [n,32] descriptors (k-means++-like seeding on Hamming distance)."""
        n = len(descriptors)
        if n == 0:
            raise ValueError("cannot train a vocabulary without descriptors")
        rng = np.random.default_rng(self.seed)
        if n > self.max_train:  # words are well placed long before every descriptor is seen
            descriptors = descriptors[np.sort(rng.choice(n, self.max_train, replace=False))]
            n = self.max_train
        bits = _bits(descriptors)
        k = min(self.k, n)
        centres = self._seed(bits, k, rng)
        for _ in range(self.iterations):
            assign = self._nearest(bits, centres)
            counts = np.bincount(assign, minlength=k).astype(np.float32)
            members = sparse.csr_matrix((np.ones(n, np.float32), (assign, np.arange(n))), shape=(k, n))
            sums = np.asarray(members @ bits)
            filled = counts > 0
            centres = centres.copy()
            centres[filled] = (sums[filled] / counts[filled, None] >= 0.5).astype(np.float32)
            empty = np.flatnonzero(~filled)
            if len(empty):
                centres[empty] = bits[rng.choice(n, size=len(empty), replace=False)]
        self.centres = centres

    @staticmethod
    def _seed(bits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """k-means++ seeding on Hamming distance (Arthur & Vassilvitskii 2007): spread-out starting words, so
        distinct clusters do not share one word while another is split."""
        chosen = [int(rng.integers(len(bits)))]
        dist = hamming_to(bits, bits[chosen[0]][None])[:, 0]
        for _ in range(k - 1):
            w = dist.astype(np.float64) ** 2
            total = w.sum()
            nxt = int(rng.choice(len(bits), p=w / total)) if total > 0 else int(rng.integers(len(bits)))
            chosen.append(nxt)
            dist = np.minimum(dist, hamming_to(bits, bits[nxt][None])[:, 0])
        return bits[chosen].copy()

    @staticmethod
    def _nearest(bits: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> np.ndarray:
        out = np.empty(len(bits), np.int32)
        for i in range(0, len(bits), chunk):
            out[i:i + chunk] = np.argmin(hamming_to(bits[i:i + chunk], centres), axis=1)
        return out

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """Word index (int32 [n]) of each uint8 [n,32] descriptor."""
        if self.centres is None:
            raise ValueError("vocabulary is not trained")
        if len(descriptors) == 0:
            return np.zeros(0, np.int32)
        return self._nearest(_bits(descriptors), self.centres)


class PlaceIndex:
    """Bag-of-words vectors of the keyframes and DBoW2's L1 similarity between them.

    Word weights are tf-idf with the idf counted over the keyframes held, recomputed on each query (a
    word in every keyframe carries no information about place).
    """

    def __init__(self) -> None:
        self.histograms: list[np.ndarray] = []  # per keyframe: word counts (float32 [k])
        self.k = 0

    def reset(self, k: int) -> None:
        self.histograms = []
        self.k = int(k)

    def add(self, words: np.ndarray) -> None:
        self.histograms.append(np.bincount(words, minlength=self.k).astype(np.float32)[: self.k])

    def __len__(self) -> int:
        return len(self.histograms)

    def scores(self, query: int) -> np.ndarray:
        """Similarity in [0, 1] of keyframe `query` to every keyframe (1 - |v_q - v_i|_1 / 2, L1-normalised)."""
        H = np.stack(self.histograms)
        df = np.count_nonzero(H > 0, axis=0)
        idf = np.log(len(H) / np.maximum(df, 1)).astype(np.float32)
        V = H / np.maximum(H.sum(1, keepdims=True), 1.0) * idf
        V /= np.maximum(V.sum(1, keepdims=True), 1e-12)
        return 1.0 - 0.5 * np.abs(V - V[query]).sum(1)
