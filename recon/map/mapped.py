"""`MappedBackend`: loop closure for any backend, by wrapping it.

The inner backend's poses are treated as odometry (`odom` frame). Results become keyframes when the camera has
moved enough; each new keyframe is looked up in the place index, candidates are verified geometrically, and a
verified loop adds an edge to the keyframe pose graph, which GTSAM optimises (SE(3) when the backend is
metric, Sim(3) when it is up to scale: geometric monocular, the learned backends' point maps). Every result
leaves in the corrected `map` frame: its pose and points are mapped by the correction of its keyframe
(optimised keyframe pose after odometry pose, a Sim(3)). After an optimisation, frames already emitted whose
corrected pose moved are emitted again as updates of the same `seq` (`is_update=True`, pose only: no point
map), so every sink revises them.

The newest correction is the `map <- odom` transform (`T_map_odom`), the ROS way (REP 105): odometry stays
continuous, the map frame jumps when a loop closes.

For learned backends the keyframes are the chunks of VGGT-Long / VGGT-SLAM: each keyframe's point map
measures loop edges 3D-3D with Sim(3), and consecutive keyframes of up-to-scale backends are joined by a measured
Sim(3) (recon.map.odometry: the backend's own chunk joins where its results carry them, else the two keyframes'
shared points, else the backend's relative pose), so a loop corrects the scale where it drifted along the path.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from recon.backends.base import BackendState
from recon.errors import ConfigError, StateError
from recon.geometry import Sim3, rotation_angle
from recon.geometry.transforms import make_se3, orthonormalise
from recon.map.keyframes import Keyframe, KeyframePolicy, LiveBounds, OrbExtractor, full_resolution_K, keypoint_points
from recon.map.odometry import SOURCES, OdometryEdge, OdometryOptions, measure_edge
from recon.map.pose_graph import GraphNoise, consistent_loops, optimise_pose_graph
from recon.map.verify import LoopMeasurement, VerifyOptions, verify_loop
from recon.map.vocabulary import BinaryVocabulary, PlaceIndex
from recon.types import BackendStats, ChunkLink, Frame, FrameResult
from recon.utils.jobs import ThreadJob

logger = logging.getLogger(__name__)

STATE_VERSION = 4  # 2: a vocabulary training in progress travels with the state; 3: odometry edges and chunks;
# 4: frame records saved as columns
_PREFIX = "map_layer."  # array names of the map in a BackendState, beside the inner backend's


@dataclass
class MapOptions:
    """Settings of the map layer (defaults suit metric and up-to-scale backends alike).

    Attributes:
        features: ORB features per keyframe.
        keyframe: when a result becomes a keyframe.
        words: vocabulary size; vocabulary_after: keyframes before the vocabulary is first trained; it is
            re-trained each time the keyframes double, up to `vocabulary_until` keyframes (the words are generic
            by then). vocabulary_budget: descriptor-word Hamming comparisons spent on a (re-)training per result
            (each result does at most twice that): training and re-assigning the keyframes' words is spread over
            the following results, the old words serving until the new ones are ready, so no step stalls
            (1 << 20 comparisons are about 0.5 GFLOP, milliseconds; a re-training at 64 keyframes takes ~80).
        min_loop_gap: keyframes between a query and its loop candidates (recent ones overlap trivially).
        candidates: best-scoring candidates verified per query (each verified one is a loop).
        min_score: a candidate's score relative to the query's score with its previous keyframe (DBoW2's
            normalised score).
        sim3: "auto" (Sim(3) unless results are metric), "on" or "off".
        optimise_every: keyframes between optimisations while loops keep being found (every loop is kept; this
            only batches the solves and the updates they emit).
        update_tolerance: a past frame is re-emitted when its corrected centre moved by more than this fraction of
            the scene scale, or its rotation by more than 0.1 degree.
        frame_cache: recent input frames kept for keyframe features (windowed backends emit late).
        min_3d: fraction of a keyframe's keypoints that must have a 3-D position.
        verify, noise: verification thresholds and pose-graph sigmas.
        live: what the map of a live session keeps (`recon.map.keyframes.LiveBounds`: keyframes with features,
            loop searches, loops, frame records); recorded sources are not bounded.
        odometry: how consecutive keyframes of up-to-scale backends are joined (recon.map.odometry).
    """

    features: int = 1000
    keyframe: KeyframePolicy = field(default_factory=KeyframePolicy)
    words: int = 256
    vocabulary_after: int = 8
    vocabulary_until: int = 64
    vocabulary_budget: int = 1 << 20
    min_loop_gap: int = 8
    candidates: int = 3
    min_score: float = 0.5
    sim3: str = "auto"
    optimise_every: int = 3
    update_tolerance: float = 1e-3
    frame_cache: int = 64
    min_3d: float = 0.3
    verify: VerifyOptions = field(default_factory=VerifyOptions)
    noise: GraphNoise = field(default_factory=GraphNoise)
    live: LiveBounds = field(default_factory=LiveBounds)
    odometry: OdometryOptions = field(default_factory=OdometryOptions)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MapOptions:
        """From plain options (`--backend-opt map='{...}'`); nested groups by their field names."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"map options: unknown {unknown}; known: {sorted(known)}")
        v = dict(values)
        for name, typ in (("keyframe", KeyframePolicy), ("verify", VerifyOptions), ("noise", GraphNoise),
                          ("live", LiveBounds), ("odometry", OdometryOptions)):
            if isinstance(v.get(name), dict):
                v[name] = typ(**v[name])
        opts = cls(**v)
        if opts.sim3 not in ("auto", "on", "off"):
            raise ConfigError(f"map options: sim3 must be auto, on or off, got {opts.sim3!r}")
        if opts.odometry.edges not in ("measured", "backend"):
            raise ConfigError(f"map options: odometry.edges must be measured or backend, got {opts.odometry.edges!r}")
        return opts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Record:
    """What the map keeps of each emitted frame: enough to re-emit its corrected pose."""

    t_ns: int
    T_odom: np.ndarray
    K: np.ndarray
    keyframe: int
    metric: bool
    T_out: np.ndarray


_RECORD_FIELDS = tuple(f.name for f in fields(_Record))


class MappedBackend:
    """Wraps `inner` (any `recon.backends.base.Backend`) with keyframes, place recognition and a pose graph."""

    def __init__(self, inner: Any, options: MapOptions | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.options = options or MapOptions()
        self._orb = OrbExtractor(self.options.features)
        from recon.map.pose_graph import _gtsam

        _gtsam()  # import (and a missing package's error) now, not as a stall at the first loop
        self._reset_map()

    # -- Backend interface -------------------------------------------------------------------------------------

    def reset(self) -> None:
        self.inner.reset()
        self._reset_map()

    def step(self, frame: Frame) -> list[FrameResult]:
        self._live = bool(frame.meta.get("live", False))
        self._recent[frame.seq] = (frame.image, frame.depth)
        while len(self._recent) > self._frame_cache:
            self._recent.popitem(last=False)
        found: list[FrameResult] = []
        if self._live:
            self._advance_training()  # live: one budget per step (per result, a step with revisions spent several)
            self._advance_stale()
            found = self._take_loop_search()
        return self._with_correction(found + self._process(self.inner.step(frame)))

    def flush(self) -> list[FrameResult]:
        out = self._take_loop_search(wait=True)
        out += self._process(self.inner.flush())
        if self._pending_loops:
            out.extend(self._optimise())
        return self._with_correction(out)

    def _with_correction(self, results: list[FrameResult]) -> list[FrameResult]:
        """Every result carries the newest map <- odom correction (`FrameResult.T_map_odom`), so a front end
        that only sees results (over the wire) can publish map -> odom -> camera."""
        if results:
            T = self.T_map_odom
            for r in results:
                r.T_map_odom = T.copy()
        return results

    def stats(self) -> BackendStats:
        s = self.inner.stats()
        s.extra.update(map_keyframes=len(self.keyframes), map_loops=len(self.loops), map_loops_used=self.loops_used,
                       map_optimisations=self.optimisations, map_mode="sim3" if self._sim3 else "se3",
                       map_evicted=dict(self.evicted), map_odometry=self.odometry_sources())
        if self._opt_ms:
            s.timings_ms["pose_graph"] = float(np.mean(self._opt_ms))
        s.memory_bytes += sum(k.descriptors.nbytes + k.keypoints.nbytes + k.points_cam.nbytes for k in self.keyframes)
        return s

    # -- map frame -----------------------------------------------------------------------------------------------

    @property
    def T_map_odom(self) -> np.ndarray:
        """Newest correction map <- odom as a 4x4 Sim(3) matrix ([[s R, t], [0, 1]]; s = 1 for SE(3) maps)."""
        if not self.keyframes:
            return np.eye(4)
        return self._correction(len(self.keyframes) - 1).matrix()

    def odometry_sources(self) -> dict[str, int]:
        """How many odometry edges come from each source (recon.map.odometry; "fallback": an up-to-scale edge
        whose keyframes shared too few points, joined by the backend's relative pose); edges still to be
        re-measured after a revision count under the source they had."""
        counts = dict.fromkeys(SOURCES, 0)
        for edge in self._edges:
            counts[edge.source] += 1
        return counts

    def corrected_trajectory(self) -> dict[int, np.ndarray]:
        """seq -> corrected pose of every frame emitted so far."""
        return {seq: rec.T_out for seq, rec in self._frames.items()}

    # -- internals -----------------------------------------------------------------------------------------------

    def _reset_map(self) -> None:
        self.keyframes: list[Keyframe] = []
        self.loops: list[LoopMeasurement] = []
        self._nodes: list[Sim3] = []  # optimised keyframe poses map <- camera
        self._edges: list[OdometryEdge] = []  # keyframe i -> i + 1
        self._stale: set[int] = set()  # edges whose keyframe was revised: measured again, one per result
        self._chunks: list[ChunkLink | None] = []  # per keyframe, its result's chunk
        self._joins: dict[int, ChunkLink] = {}  # chunk index -> how the backend joined it to the previous one
        self._frames: dict[int, _Record] = {}
        self._recent: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._vocab = BinaryVocabulary(self.options.words)
        self._index = PlaceIndex()
        self._trained_at = 0
        self._training: Generator[int, None, None] | None = None
        self._training_from = 0  # keyframes the training in progress learns from
        self._training_chunks = 0  # chunks of it done (a restored state replays them)
        self._metric: bool | None = None
        self._sim3 = self.options.sim3 == "on"
        self._pending_loops = 0
        self._last_opt_kf = -10**9
        self._unit = 1.0
        self.optimisations = 0
        self.loops_used = 0  # loops in the consistent set of the latest solve
        self._opt_ms: list[float] = []
        self._K_full: np.ndarray | None = None
        self._stream_id = ""
        self._live = False
        self._last_loop_kf = -10**9
        self._loop_search: _LoopSearch | None = None  # live: the loop verification running beside the stream
        self.evicted = {"keyframes": 0, "loops": 0, "frames": 0}  # what the live bounds dropped

    @property
    def _frame_cache(self) -> int:
        """Input frames kept for keyframe features: `MapOptions.frame_cache`, at most `live.frame_cache` live."""
        o = self.options
        return min(o.frame_cache, o.live.frame_cache or o.frame_cache) if self._live else o.frame_cache

    @property
    def _training_budget(self) -> int:
        """Comparisons of the vocabulary training per result (recorded) or per step (live)."""
        return self.options.live.training_budget if self._live else self.options.vocabulary_budget

    def _correction(self, k: int) -> Sim3:
        s, R, t = self._corrections([k])
        return Sim3(s[0], R[0], t[0])

    def _corrections(self, ks: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map <- odom corrections node_k @ odom_k^-1 of keyframes `ks` as stacked (s [n], R [n,3,3], t [n,3])."""
        nodes = [self._nodes[k] for k in ks]
        odom = np.stack([self.keyframes[k].T_odom_cam for k in ks])
        s = np.array([n.s for n in nodes])
        R = np.stack([n.R for n in nodes]) @ np.swapaxes(odom[:, :3, :3], 1, 2)
        t = np.stack([n.t for n in nodes]) - s[:, None] * np.einsum("nij,nj->ni", R, odom[:, :3, 3])
        return s, R, t

    def _process(self, results: list[FrameResult]) -> list[FrameResult]:
        out: list[FrameResult] = []
        for r in results:
            if not self._live:
                self._advance_training()
                self._advance_stale()
            if not r.tracked:
                out.append(r)
                continue
            self._stream_id = r.stream_id
            if r.chunk is not None:
                self._joins[int(r.chunk.index)] = r.chunk
            if self._metric is None:
                self._metric = bool(r.metric)
                self._sim3 = self.options.sim3 == "on" or (self.options.sim3 == "auto" and not r.metric)
            updates: list[FrameResult] = []
            rec = self._frames.get(r.seq)
            if rec is not None:
                rec.T_odom = r.T_world_cam.copy()
                k = rec.keyframe
                if k >= 0 and self.keyframes[k].seq == r.seq:
                    # The backend revised a keyframe (bundle adjustment): its node moves with it and keeps its
                    # correction, else the revision would leak into the map frame as a correction no loop made.
                    C = self._correction(k)
                    kf = self.keyframes[k]
                    kf.T_odom_cam = _rigid(r.T_world_cam)
                    self._nodes[k] = C @ Sim3.from_se3(kf.T_odom_cam)
                    if r.points_world is not None or r.depth is not None:
                        kf.refresh_points(r, self._recent.get(r.seq, (None, None))[1])
                        self._set_unit()
                    if r.chunk is not None:
                        self._chunks[k] = r.chunk
                    # Its odometry edges are measured again, one per result (a bundle adjustment revises many
                    # keyframes at once); until then they keep their scale, with the revised poses.
                    self._stale.update(e for e in (k - 1, k) if 0 <= e < len(self._edges))
            else:
                k = len(self.keyframes) - 1
                last = self.keyframes[-1] if self.keyframes else None
                if self.options.keyframe.is_keyframe(r.T_world_cam, r.seq, last):
                    kf = self._make_keyframe(r)
                    if kf is not None:
                        k = self._add_keyframe(kf, r.chunk)
                        updates = self._after_keyframe(k)
                rec = _Record(int(r.t_ns), r.T_world_cam.copy(), r.K.copy(), k, bool(r.metric), r.T_world_cam.copy())
                self._frames[r.seq] = rec
                if self._live:
                    self._bound_frames()
            C = self._correction(rec.keyframe) if rec.keyframe >= 0 else Sim3.identity()
            out.append(self._apply(r, C))
            rec.T_out = out[-1].T_world_cam.copy()
            out.extend(updates)
        return out

    @staticmethod
    def _apply(r: FrameResult, C: Sim3) -> FrameResult:
        pts = r.points_world
        if pts is not None and not np.allclose(C.matrix(), np.eye(4)):
            # In the points' own precision: a float64 round trip of a dense 640x480 map took 13 ms (this: 6 ms) in
            # every step once a loop had moved the map, for no accuracy a float32 map can keep.
            A = (C.s * C.R.T).astype(pts.dtype)
            pts = pts @ A + C.t.astype(pts.dtype)
        return replace(r, T_world_cam=C.apply_poses(r.T_world_cam), points_world=pts)

    def _make_keyframe(self, r: FrameResult) -> Keyframe | None:
        """Features and 3-D keypoints of a result; None when too few keypoints have 3-D (a monocular frame held
        before initialisation, an empty view): the next result gets the chance instead."""
        image, depth = self._recent.get(r.seq, (r.image, None))
        if image is None:
            raise ConfigError(f"map layer: result {r.stream_id}/{r.seq} has no image and its frame is no longer "
                              "cached; raise MapOptions.frame_cache above the backend's latency")
        import cv2

        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        kp, desc = self._orb(gray)
        pts = keypoint_points(r, kp, w, h, depth)
        ok = np.isfinite(pts[:, 2])
        if ok.sum() < max(self.options.verify.min_inliers, self.options.min_3d * len(kp)):
            return None
        self._K_full = full_resolution_K(r, w, h)
        return Keyframe(len(self.keyframes), int(r.seq), int(r.t_ns), _rigid(r.T_world_cam), kp, desc, pts, (w, h),
                        float(np.median(pts[ok, 2])))

    def _add_keyframe(self, kf: Keyframe, chunk: ChunkLink | None = None) -> int:
        k = kf.index
        C_prev = self._correction(k - 1) if k > 0 else Sim3.identity()
        self.keyframes.append(kf)
        self._chunks.append(chunk)
        # The node starts at the odometry pose under the previous correction: with no loop the map frame stays the
        # odometry frame; the measured edge below only acts in the next solve.
        self._nodes.append(C_prev @ Sim3.from_se3(kf.T_odom_cam))
        self._set_unit()
        self._index_keyframe(kf)
        if k > 0:
            self._edges.append(OdometryEdge(1.0, None, "backend"))
            self._measure_edge(k - 1)
        if self._live:
            self._bound_keyframes()
        return k

    def _measure_edge(self, i: int) -> OdometryEdge:
        """The odometry edge keyframe i -> i + 1 (recon.map.odometry), measured now."""
        edge = measure_edge(self.keyframes[i], self.keyframes[i + 1], self._K_full, sim3=self._sim3,
                            verify=self.options.verify, options=self.options.odometry,
                            default_scale=self.options.noise.odom_scale,
                            chunks=(self._chunks[i], self._chunks[i + 1]), joins=self._joins)
        self._edges[i] = edge
        self._stale.discard(i)
        return edge

    def _bound_keyframes(self) -> None:
        """Live: the oldest keyframes beyond `LiveBounds.keyframes` lose their features (never the newest, a
        pending loop's ends, or any while a vocabulary training in progress reads them)."""
        if self._training is not None:
            return
        protected = {self.keyframes[-1].index} | {i for m in self.loops[len(self.loops) - self._pending_loops:]
                                                  for i in (m.query, m.match)}
        if self._loop_search is not None:
            protected |= {self._loop_search.query, *self._loop_search.candidates}
        for i in self.options.live.evict(self.keyframes, protected):
            self._index.drop(i)
            self.evicted["keyframes"] += 1
            if self.evicted["keyframes"] == 1:
                logger.info("map: live stream %s holds %d keyframes with features; older ones keep only their pose "
                            "node (MapOptions.live.keyframes)", self._stream_id, self.options.live.keyframes)

    def _bound_frames(self) -> None:
        """Live: records of the oldest frames beyond `LiveBounds.frames` go (those frames are no longer revised)."""
        cap = self.options.live.frames
        while cap > 0 and len(self._frames) > cap:
            del self._frames[next(iter(self._frames))]
            self.evicted["frames"] += 1

    def _set_unit(self) -> None:
        """The graph's scene scale: the median depth of the first keyframe that has 3-D points."""
        first = next((kf for kf in self.keyframes if kf.has_points), None)
        self._unit = first.scale if first is not None else 1.0

    def _index_keyframe(self, kf: Keyframe) -> None:
        n = len(self.keyframes)
        if self._vocab.trained:
            kf.words = self._vocab.words(kf.descriptors)
            self._index.add(kf.words)
        if self._training is None and (n >= self.options.vocabulary_after if not self._vocab.trained else
                                       2 * self._trained_at <= n <= self.options.vocabulary_until):
            self._training, self._training_from, self._training_chunks = self._train_steps(n), n, 0

    def _advance_stale(self) -> None:
        """Measure one odometry edge whose keyframe was revised (one per result, live: one per step)."""
        if self._stale:
            self._measure_edge(min(self._stale))

    def _advance_training(self, budget: int | None = None) -> None:
        """Do about `budget` comparisons of the vocabulary training in progress (at most twice that)."""
        budget = self._training_budget if budget is None else budget
        spent = 0
        while self._training is not None and spent < budget:
            try:
                spent += next(self._training)
                self._training_chunks += 1
            except StopIteration:
                self._training = None

    def _train_steps(self, n: int) -> Generator[int, None, None]:
        """Train on the first `n` keyframes, give every keyframe (those added meanwhile too) its new words, then
        swap vocabulary and index in at once; yields the work of each chunk (see `BinaryVocabulary.train_steps`;
        the words do not depend on the chunk size)."""
        budget = self._training_budget
        centres = yield from self._vocab.train_steps(np.concatenate([k.descriptors for k in self.keyframes[:n]]),
                                                     budget)
        words: list[np.ndarray] = []
        while len(words) < len(self.keyframes):
            words.append((yield from self._vocab.words_steps(self.keyframes[len(words)].descriptors, centres,
                                                             budget)))
        self._vocab.centres = centres
        self._index.reset(len(centres))
        for k, w in zip(self.keyframes, words, strict=True):
            k.words = w
            self._index.add(w)
        self._trained_at = n
        logger.info("map: vocabulary of %d words trained on %d keyframes", len(centres), n)

    def _after_keyframe(self, k: int) -> list[FrameResult]:
        live = self.options.live if self._live else None
        if live is None:
            return self._take_loops(k, self._detect_loops(k))
        if k - self._last_loop_kf > live.loop_every and self._loop_search is None:
            self._start_loop_search(k)
        return self._take_loops(k, [])

    def _take_loops(self, k: int, loops: list[LoopMeasurement]) -> list[FrameResult]:
        """Add the verified loops of keyframe `k`; solve the graph when it is due (the revisions it makes)."""
        live = self.options.live if self._live else None
        for loop in loops:
            self._last_loop_kf = k
            self.loops.append(loop)
            self._pending_loops += 1
            if live is not None and 0 < live.loops < len(self.loops):
                self.loops.pop(0)
                self._pending_loops = min(self._pending_loops, len(self.loops))
                self.evicted["loops"] += 1
            logger.info("map: loop keyframe %d (seq %d) -> %d (seq %d): %d inliers of %d matches, scale %.3f", k,
                        self.keyframes[k].seq, loop.match, self.keyframes[loop.match].seq, loop.inliers,
                        loop.matches, loop.S_match_query.s)
        if self._pending_loops and len(self.keyframes) - 1 - self._last_opt_kf >= self.options.optimise_every:
            return self._optimise()
        return []

    def _loop_candidates(self, k: int) -> list[int]:
        """Keyframes that may close a loop with keyframe `k`, best place-recognition score first."""
        o = self.options
        if len(self._index) != len(self.keyframes) or k < o.min_loop_gap + 1:
            return []
        scores = self._index.scores(k)
        reference = scores[k - 1]
        old = np.arange(0, k - o.min_loop_gap)
        if len(old) == 0 or reference <= 0:
            return []
        order = old[np.argsort(-scores[old], kind="stable")][: o.live.candidates if self._live else o.candidates]
        return [int(j) for j in order if scores[j] >= o.min_score * reference]

    def _detect_loops(self, k: int) -> list[LoopMeasurement]:
        """Every verified candidate of keyframe `k`: each is a measurement of its own (another image pair), and
        the pose graph's consistency check compares them with each other and with later loops.

        No bound on the measured scale: a monocular map's scale drifts by any factor over a long walk (7x on a
        rendered loop), and the loop is what measures it; wrong loops are caught by their inconsistency.
        """
        return verify_candidates(self.keyframes[k], [self.keyframes[j] for j in self._loop_candidates(k)],
                                 self._K_full, metric=not self._sim3, options=self.options.verify,
                                 first_only=self._live)

    def _start_loop_search(self, k: int) -> None:
        """Live: verify keyframe `k`'s candidates on a thread, so the keyframe's step does not wait for it (it
        was 0.1-0.4 s of the longest live steps); `_take_loop_search` adds what it found at a later step. The
        thread reads copies of the keyframes (a revision or an eviction replaces their arrays meanwhile)."""
        candidates = self._loop_candidates(k)
        if not candidates:
            return
        job = ThreadJob("map-loop-search", verify_candidates, copy.copy(self.keyframes[k]),
                        [copy.copy(self.keyframes[j]) for j in candidates], self._K_full, metric=not self._sim3,
                        options=self.options.verify, first_only=True)
        self._loop_search = _LoopSearch(k, candidates, job.start())

    def _take_loop_search(self, wait: bool = False) -> list[FrameResult]:
        """Add the loops of a finished search (waiting for it with `wait`); the revisions a solve made."""
        search = self._loop_search
        if search is None or not (search.job.wait() if wait else search.job.done):
            return []
        self._loop_search = None
        if search.job.error is not None:
            logger.warning("map: a loop search of keyframe %d failed (%s); later keyframes search again",
                           search.query, search.job.error)
            return []
        return self._take_loops(search.query, search.job.result or [])

    def _optimise(self) -> list[FrameResult]:
        """Solve the pose graph, move the keyframes, and re-emit past frames whose corrected pose changed."""
        t0 = time.perf_counter()
        n = len(self.keyframes)
        edges = self._edges
        odom = [e.sim3(self.keyframes[i], self.keyframes[i + 1]) for i, e in enumerate(edges)]
        loops = [(m.match, m.query, m.S_match_query) for m in self.loops]
        keep = consistent_loops(odom, loops, sim3=self._sim3, unit=self._unit, noise=self.options.noise)
        if len(keep) < len(loops):
            logger.info("map: %d of %d loops left out, inconsistent with the largest consistent set: %s",
                        len(loops) - len(keep), len(loops),
                        [(self.keyframes[m.query].seq, self.keyframes[m.match].seq)
                         for i, m in enumerate(self.loops) if i not in set(keep)])
        self._nodes, info = optimise_pose_graph(self._nodes, odom, [loops[i] for i in keep], sim3=self._sim3,
                                                unit=self._unit, noise=self.options.noise,
                                                odometry_scale_sigmas=[e.scale_sigma for e in edges])
        self.loops_used = len(keep)
        self._pending_loops = 0
        self._last_opt_kf = n - 1
        self.optimisations += 1
        ms = 1000 * (time.perf_counter() - t0)
        self._opt_ms.append(ms)
        logger.info("map: pose graph of %d keyframes and %d loops optimised in %.1f ms (error %.3g -> %.3g)", n,
                    len(loops), ms, info["error_before"], info["error_after"])
        return self._updates()

    def _updates(self) -> list[FrameResult]:
        """Re-emit every recorded frame whose corrected pose moved by more than the update tolerance.

        One batched transform of all recorded frames: per frame, Sim(3) objects cost ~50 us (70 ms over a live
        stream's records, the largest part of a loop closure's step).
        """
        seqs = [seq for seq, rec in sorted(self._frames.items()) if rec.keyframe >= 0]
        if not seqs:
            return []
        recs = [self._frames[seq] for seq in seqs]
        keyframe = np.array([rec.keyframe for rec in recs], np.int64)
        used, row = np.unique(keyframe, return_inverse=True)
        s, R, t = (c[row] for c in self._corrections(used))
        T_odom = np.stack([rec.T_odom for rec in recs])
        T_out = np.stack([rec.T_out for rec in recs])
        R_new = R @ T_odom[:, :3, :3]
        t_new = s[:, None] * np.einsum("nij,nj->ni", R, T_odom[:, :3, 3]) + t
        moved = np.linalg.norm(t_new - T_out[:, :3, 3], axis=1)
        turned = np.degrees(rotation_angle(np.swapaxes(T_out[:, :3, :3], 1, 2) @ R_new))
        tol = self.options.update_tolerance * self._unit
        T_new = make_se3(R_new, t_new)
        out = []
        for i in np.flatnonzero((moved > tol) | (turned > 0.1)):
            rec = recs[i]
            rec.T_out = T_new[i]
            out.append(FrameResult(self._stream_id, seqs[i], rec.t_ns, T_new[i], rec.K, metric=rec.metric,
                                   is_update=True))
        return out

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def save_state(self) -> BackendState:
        """The inner backend's state with the map (keyframes, loops, graph, per-frame records) beside it."""
        from recon.backends.snapshot import columns, dataclass_fields, pack
        from recon.checkpoint import backend_state

        state = backend_state(self.inner)
        values = {
            "options": self.options.to_dict(),
            "keyframes": [dataclass_fields(k) for k in self.keyframes],
            "loops": [{"query": m.query, "match": m.match, "inliers": m.inliers, "matches": m.matches,
                       "S": m.S_match_query.matrix()} for m in self.loops],
            "nodes": [S.matrix() for S in self._nodes],
            "edges": [dataclass_fields(e) for e in self._edges], "stale": sorted(self._stale),
            "chunks": [None if c is None else asdict(c) for c in self._chunks],
            "joins": {str(i): asdict(c) for i, c in self._joins.items()},
            "frame_seqs": np.fromiter(self._frames, np.int64, len(self._frames)),
            "frames": columns(list(self._frames.values()), _RECORD_FIELDS),
            "vocab": self._vocab.centres, "trained_at": self._trained_at, "metric": self._metric,
            "training": None if self._training is None else [self._training_from, self._training_chunks],
            "sim3": self._sim3, "pending": self._pending_loops, "last_opt": self._last_opt_kf, "unit": self._unit,
            "optimisations": self.optimisations, "K_full": self._K_full, "stream": self._stream_id,
        }
        state.meta["map"] = {"version": STATE_VERSION, "tree": pack(values, state.arrays, prefix=_PREFIX)}
        return state

    def load_state(self, state: BackendState) -> None:
        """Restore the inner backend, then the map; a state saved without the map layer is refused."""
        from recon.backends.snapshot import rows, unpack
        from recon.checkpoint import normalise, restore_backend_state

        saved = state.meta.get("map")
        if isinstance(saved, dict) and saved.get("version") != STATE_VERSION:
            raise StateError(f"{self.name}: the map state was written by another version of recon (map state "
                             f"version {saved.get('version')!r}, this build reads {STATE_VERSION})")
        if not isinstance(saved, dict):
            raise StateError(f"{self.name}: the state has no map layer of version {STATE_VERSION} (saved with "
                             "loop closure off?); restart with the same --loop-closure setting")
        inner_state = BackendState(state.backend, state.version, state.config,
                                   {k: v for k, v in state.arrays.items() if not k.startswith(_PREFIX)},
                                   {k: v for k, v in state.meta.items() if k != "map"})
        values = unpack(saved["tree"], state.arrays)
        if normalise(values["options"]) != normalise(self.options.to_dict()):
            raise StateError(f"{self.name}: the map state was saved with other map options")
        restore_backend_state(self.inner, inner_state)
        self._reset_map()
        self.keyframes = [Keyframe(**k) for k in values["keyframes"]]
        self.loops = [LoopMeasurement(m["query"], m["match"], Sim3.from_matrix(np.asarray(m["S"])), m["inliers"],
                                      m["matches"]) for m in values["loops"]]
        self._nodes = [Sim3.from_matrix(np.asarray(M)) for M in values["nodes"]]
        self._edges = [OdometryEdge(float(e["scale"]), None if e["scale_sigma"] is None else float(e["scale_sigma"]),
                                    str(e["source"])) for e in values["edges"]]
        self._stale = {int(i) for i in values["stale"]}
        self._chunks = [None if c is None else _chunk(c) for c in values["chunks"]]
        self._joins = {int(i): _chunk(c) for i, c in values["joins"].items()}
        records = rows(values["frames"])
        if len(records) != len(values["frame_seqs"]):
            raise StateError(f"{self.name}: the map state holds {len(records)} frame records for "
                             f"{len(values['frame_seqs'])} frames")
        seqs = np.asarray(values["frame_seqs"]).tolist()
        self._frames = {int(seq): _Record(**r) for seq, r in zip(seqs, records, strict=True)}
        if values["vocab"] is not None:
            self._vocab.centres = np.asarray(values["vocab"], np.float32)
            self._index.reset(self._vocab.size)
            for k in self.keyframes:
                self._index.add(np.asarray(k.words, np.int32))
        self._trained_at = int(values["trained_at"])
        if values["training"] is not None:  # replay the chunks done: the training continues where it was
            self._training_from, chunks = (int(v) for v in values["training"])
            self._training = self._train_steps(self._training_from)
            for _ in range(chunks):
                next(self._training)
            self._training_chunks = chunks
        self._metric, self._sim3 = values["metric"], bool(values["sim3"])
        self._pending_loops, self._last_opt_kf = int(values["pending"]), int(values["last_opt"])
        self._unit, self.optimisations = float(values["unit"]), int(values["optimisations"])
        self._K_full = None if values["K_full"] is None else np.asarray(values["K_full"])
        self._stream_id = str(values["stream"])


def verify_candidates(query: Keyframe, candidates: list[Keyframe], K: np.ndarray, *, metric: bool,
                      options: VerifyOptions, first_only: bool) -> list[LoopMeasurement]:
    """The loops verified between `query` and its candidates (in order; the first one only with `first_only`)."""
    found: list[LoopMeasurement] = []
    for match in candidates:
        m = verify_loop(query, match, K, metric=metric, options=options)
        if m is not None:
            found.append(m)
            if first_only:
                break  # live: one loop per search (LiveBounds)
    return found


@dataclass
class _LoopSearch:
    """A live loop search in flight: its query keyframe, the candidates (indices) and the thread verifying them.
    A reset or restored map drops it (`_reset_map`), so it never outlives the keyframes it indexes."""

    query: int
    candidates: list[int]
    job: ThreadJob[list[LoopMeasurement]]


def _chunk(values: dict[str, Any]) -> ChunkLink:
    S = values.get("S_prev_chunk")
    sigma = values.get("log_scale_sigma")
    return ChunkLink(int(values["index"]), None if S is None else np.asarray(S, np.float64),
                     int(values.get("support", 0)), None if sigma is None else float(sigma))


def _rigid(T: np.ndarray) -> np.ndarray:
    """The pose with its rotation made exactly orthonormal: a backend computing in float32 (LASER's Sim(3)-joined
    windows) hands rotations off by ~1e-6, and products of them in `Sim3` fail its rotation check."""
    out = np.array(T, np.float64)
    out[:3, :3] = orthonormalise(out[:3, :3])
    return out
