"""Procedural indoor scenes with exact ground truth, written in the TUM RGB-D layout.

A room (floor, walls, ceiling) with boxes, tables, shelves and cylinders is ray-cast with open3d's
`RaycastingScene` (one `cast_rays` call per frame). Surfaces carry *solid* procedural textures (3D value noise,
blotches and checkers evaluated at the hit point), so the pattern is glued to the geometry and corners track
across views like real texture does; lighting is view-independent (Lambertian, fixed light) so brightness is
constant between frames.

Conventions: world z is up, the room is centred on the origin with its floor at z = 0; cameras use OpenCV axes
(x right, y down, z forward) and poses are `T_world_cam`. Pixel centres sit at integer coordinates
(`recon.geometry.camera`), so `cx = (width - 1) / 2`. Depth is the z coordinate in the camera frame (not the ray
length), stored as uint16 PNG in units of 1/5000 m (TUM convention).

Output layout (what `recon.datasets.tum.TumSequence` reads):

    OUT/rgb/<t>.png  OUT/depth/<t>.png  OUT/rgb.txt  OUT/depth.txt  OUT/groundtruth.txt  OUT/camera.json

Everything is a pure function of the arguments: the same seed gives byte-identical files.

Example:
    from recon.datasets.synthetic import generate_sequence
    generate_sequence("out/walk0", seed=0, trajectory="walk", num_frames=90)
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from recon.datasets.degrade import Degradations, degrade_colour, degrade_depth, motion_blur
from recon.errors import ConfigError, SequenceError
from recon.io.trajectory import write_tum_trajectory
from recon.utils.progress import progress

logger = logging.getLogger(__name__)

TRAJECTORIES = ("walk", "orbit", "forward", "loop")
LOOP_SECONDS = 16.0  # one lap of the "loop" trajectory at speed 1 (480 frames at 30 frames/s)
DEPTH_SCALE = 5000.0  # uint16 units per metre (TUM RGB-D)
_T0_US = 1_000_000  # first timestamp: 1 s (small values keep float parsers exact to the microsecond)
_UP = np.array([0.0, 0.0, 1.0])


# ----------------------------------------------------------------------------------------------------------------
# Procedural solid textures


def _mix(h: np.ndarray) -> np.ndarray:
    """Integer finaliser (uint32, wrapping multiplies): spreads every input bit over the output."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x45D9F3B)
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x45D9F3B)
    return h ^ (h >> np.uint32(16))


def value_noise(p_n3: np.ndarray, salt: int) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] at points p (lattice spacing 1), trilinear with a smoothstep fade.

    Lattice values come from a fixed integer hash (platform independent, no tables), so the texture is a pure
    function of position and salt.
    """
    f = np.floor(p_n3)
    t = p_n3 - f
    t = t * t * (3.0 - 2.0 * t)
    i = f.astype(np.int64).astype(np.uint32)  # two's complement wrap keeps negative cells distinct
    primes = (np.uint32(73856093), np.uint32(19349663), np.uint32(83492791))
    hx = [(i[:, 0] + np.uint32(d)) * primes[0] ^ np.uint32((salt * 2654435761) & 0xFFFFFFFF) for d in (0, 1)]
    hy = [(i[:, 1] + np.uint32(d)) * primes[1] for d in (0, 1)]
    hz = [(i[:, 2] + np.uint32(d)) * primes[2] for d in (0, 1)]
    wx = (1.0 - t[:, 0], t[:, 0])
    wy = (1.0 - t[:, 1], t[:, 1])
    wz = (1.0 - t[:, 2], t[:, 2])
    out = np.zeros(len(p_n3))
    scale = 1.0 / float(0x1000000)
    for dx in (0, 1):
        for dy in (0, 1):
            hxy = hx[dx] ^ hy[dy]
            wxy = wx[dx] * wy[dy]
            for dz in (0, 1):
                h = _mix(hxy ^ hz[dz]) & np.uint32(0xFFFFFF)
                out += wxy * wz[dz] * (h.astype(np.float64) * scale)
    return out


def _fade(footprint: np.ndarray | None, cell: float) -> np.ndarray | float:
    """1 where a pattern of period `cell` is resolved by a sample footprint, 0 where it would alias (between)."""
    if footprint is None:
        return 1.0
    return np.clip(2.0 - 4.0 * footprint / cell, 0.0, 1.0)


def fbm(p_n3: np.ndarray, salt: int, octaves: int = 3, footprint: np.ndarray | None = None) -> np.ndarray:
    """Fractal sum of value noise in [0, 1]; octaves finer than the sample `footprint` (in lattice units) fade
    to their mean, so distant or grazing surfaces stay stable from frame to frame instead of flickering."""
    total = np.zeros(len(p_n3))
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        w = _fade(footprint, 1.0 / 2.0**o)
        total += amp * (w * value_noise(p_n3 * (2.0**o), salt + 101 * o) + (1.0 - w) * 0.5)
        norm += amp
        amp *= 0.5
    return total / norm


@dataclass(frozen=True)
class Material:
    """A solid texture: two colours mixed by blotches, optional checkers, and fine grain.

    Attributes:
        color_a, color_b: RGB in [0, 1].
        blotch_scale: metres per noise cell of the blotch pattern (sharp-edged spots give trackable corners).
        checker: checker cell size in metres (0: none).
        grain: amplitude of the fine noise (keeps texture at close range).
        salt: noise seed of this material.
    """

    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    blotch_scale: float
    checker: float
    grain: float
    salt: int

    def shade(self, p_n3: np.ndarray, footprint: np.ndarray | None = None) -> np.ndarray:
        """Albedo n x 3 at world points p; `footprint` (metres per colour sample) band-limits the pattern."""
        fp = None if footprint is None else footprint / self.blotch_scale
        n = fbm(p_n3 / self.blotch_scale, self.salt, octaves=3, footprint=fp)
        # A steep ramp instead of a hard threshold: edges stay sharp at the pixel scale but do not alias.
        m = np.clip((n - 0.5) * 6.0 + 0.5, 0.0, 1.0)
        if self.checker > 0:
            c = np.floor(p_n3 / self.checker).astype(np.int64).sum(axis=1) & 1
            checkered = np.where(c == 1, 1.0 - 0.6 * m, 0.4 * m)
            w = _fade(footprint, 2.0 * self.checker)  # period of a checker is two cells
            m = w * checkered + (1.0 - w) * (0.5 - 0.1 * m)  # unresolved: the mean of both cells
        g = (value_noise(p_n3 / 0.03, self.salt + 7) - 0.5) * _fade(footprint, 0.03)
        a = np.asarray(self.color_a)
        b = np.asarray(self.color_b)
        col = a[None, :] * (1.0 - m[:, None]) + b[None, :] * m[:, None]
        return np.clip(col * (1.0 + self.grain * g[:, None]), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# Scene


@dataclass
class Scene:
    """Triangle meshes with one material each, plus the room size (metres)."""

    size: tuple[float, float, float]
    vertices: list[np.ndarray] = field(default_factory=list)
    triangles: list[np.ndarray] = field(default_factory=list)
    materials: list[Material] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, name: str, verts: np.ndarray, tris: np.ndarray, material: Material) -> None:
        self.names.append(name)
        self.vertices.append(np.asarray(verts, dtype=np.float32))
        self.triangles.append(np.asarray(tris, dtype=np.uint32))
        self.materials.append(material)


_BOX_TRIS = np.array([[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
                      [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]])


def _box(lo: np.ndarray, hi: np.ndarray, yaw: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box [lo, hi] rotated by `yaw` about its vertical centre line."""
    x0, y0, z0 = lo
    x1, y1, z1 = hi
    v = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
                  [x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]], dtype=np.float64)
    if yaw:
        c = (np.asarray(lo) + np.asarray(hi)) / 2
        R = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
        v = (v - c) @ R.T + c
    return v, _BOX_TRIS.copy()


def _cylinder(center_xy: np.ndarray, radius: float, z0: float, z1: float, segments: int = 32) -> tuple[
        np.ndarray, np.ndarray]:
    """Closed vertical cylinder (a prism with `segments` sides)."""
    a = np.linspace(0.0, 2 * math.pi, segments, endpoint=False)
    ring = np.stack([center_xy[0] + radius * np.cos(a), center_xy[1] + radius * np.sin(a)], axis=1)
    bottom = np.column_stack([ring, np.full(segments, z0)])
    top = np.column_stack([ring, np.full(segments, z1)])
    centers = np.array([[center_xy[0], center_xy[1], z0], [center_xy[0], center_xy[1], z1]])
    v = np.vstack([bottom, top, centers])
    tris = []
    cb, ct = 2 * segments, 2 * segments + 1
    for i in range(segments):
        j = (i + 1) % segments
        tris += [[i, j, segments + j], [i, segments + j, segments + i], [cb, j, i], [ct, segments + i, segments + j]]
    return v, np.asarray(tris)


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    verts, tris, off = [], [], 0
    for v, t in parts:
        verts.append(v)
        tris.append(t + off)
        off += len(v)
    return np.vstack(verts), np.vstack(tris)


def _random_material(rng: np.random.Generator, salt: int, *, checker: bool = False) -> Material:
    hue = rng.uniform(0, 1)
    base = np.array(_hsv_to_rgb(hue, rng.uniform(0.35, 0.8), rng.uniform(0.55, 0.9)))
    other = np.array(_hsv_to_rgb((hue + rng.uniform(0.3, 0.7)) % 1.0, rng.uniform(0.2, 0.7), rng.uniform(0.1, 0.4)))
    return Material(tuple(base), tuple(other), blotch_scale=float(rng.uniform(0.08, 0.2)),
                    checker=float(rng.uniform(0.1, 0.25)) if checker else 0.0, grain=0.25, salt=salt)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def build_scene(seed: int) -> Scene:
    """A random furnished room (deterministic in `seed`).

    Layout keeps a free ring for the cameras: a central table group within ~0.75 m of the centre and furniture
    against the walls, so walk/orbit/forward paths at 1.2-2.0 m from the centre never enter a solid.
    """
    rng = np.random.default_rng(seed)
    W, D, H = float(rng.uniform(6.0, 7.0)), float(rng.uniform(6.5, 8.0)), float(rng.uniform(2.6, 3.0))
    scene = Scene(size=(W, D, H))
    salt = seed * 1000 + 1
    hw, hd = W / 2, D / 2
    # Room surfaces as separate quads, each with its own material (walls of one colour confuse nobody, but
    # different walls help a viewer see where the camera is looking).
    quads = {
        "floor": [[-hw, -hd, 0], [hw, -hd, 0], [hw, hd, 0], [-hw, hd, 0]],
        "ceiling": [[-hw, -hd, H], [hw, -hd, H], [hw, hd, H], [-hw, hd, H]],
        "wall_south": [[-hw, -hd, 0], [hw, -hd, 0], [hw, -hd, H], [-hw, -hd, H]],
        "wall_north": [[-hw, hd, 0], [hw, hd, 0], [hw, hd, H], [-hw, hd, H]],
        "wall_west": [[-hw, -hd, 0], [-hw, hd, 0], [-hw, hd, H], [-hw, -hd, H]],
        "wall_east": [[hw, -hd, 0], [hw, hd, 0], [hw, hd, H], [hw, -hd, H]],
    }
    for name, q in quads.items():
        salt += 1
        mat = _random_material(rng, salt, checker=(name == "floor"))
        if name == "ceiling":
            mat = Material((0.85, 0.85, 0.8), (0.45, 0.45, 0.5), 0.25, 0.0, 0.2, salt)
        scene.add(name, np.asarray(q, dtype=np.float64), np.array([[0, 1, 2], [0, 2, 3]]), mat)

    # Central group: a table (top + 4 legs) with a box and a cylinder on it.
    salt += 1
    tw, td, th = rng.uniform(0.9, 1.3), rng.uniform(0.6, 0.9), rng.uniform(0.7, 0.8)
    yaw = float(rng.uniform(-0.5, 0.5))
    parts = [_box(np.array([-tw / 2, -td / 2, th - 0.05]), np.array([tw / 2, td / 2, th]), yaw)]
    c, s = math.cos(yaw), math.sin(yaw)
    for sx in (-1, 1):
        for sy in (-1, 1):
            lx, ly = sx * (tw / 2 - 0.06), sy * (td / 2 - 0.06)
            px, py = c * lx - s * ly, s * lx + c * ly
            parts.append(_box(np.array([px - 0.03, py - 0.03, 0.0]), np.array([px + 0.03, py + 0.03, th - 0.05]), yaw))
    scene.add("table", *_merge(parts), _random_material(rng, salt))
    salt += 1
    bs = rng.uniform(0.2, 0.35)
    scene.add("table_box", *_box(np.array([-bs, -bs / 2, th]), np.array([0.0, bs / 2, th + bs]), yaw),
              _random_material(rng, salt, checker=True))
    salt += 1
    scene.add("table_cylinder", *_cylinder(np.array([0.2 * c, 0.2 * s]), 0.1, th, th + rng.uniform(0.2, 0.4)),
              _random_material(rng, salt))

    # Furniture against the walls: shelves (box with shelf boards), boxes, cylinders.
    slots = [("south", x) for x in np.linspace(-hw + 0.9, hw - 0.9, 4)] + \
            [("north", x) for x in np.linspace(-hw + 0.9, hw - 0.9, 4)] + \
            [("west", y) for y in np.linspace(-hd + 1.2, hd - 1.2, 3)] + \
            [("east", y) for y in np.linspace(-hd + 1.2, hd - 1.2, 3)]
    for k, (wall, pos) in enumerate(slots):
        kind = rng.choice(["shelf", "box", "cylinder", "stack", "none"], p=[0.3, 0.25, 0.2, 0.15, 0.1])
        if kind == "none":
            continue
        depth = float(rng.uniform(0.3, 0.55))
        width = float(rng.uniform(0.5, 0.9))
        gap = 0.02
        # Centre of the footprint, pushed against its wall.
        if wall == "south":
            cx, cy = pos, -hd + gap + depth / 2
        elif wall == "north":
            cx, cy = pos, hd - gap - depth / 2
        elif wall == "west":
            cx, cy = -hw + gap + depth / 2, pos
        else:
            cx, cy = hw - gap - depth / 2, pos
        ex, ey = (width / 2, depth / 2) if wall in ("south", "north") else (depth / 2, width / 2)
        salt += 1
        mat = _random_material(rng, salt, checker=bool(rng.uniform() < 0.3))
        if kind == "shelf":
            h = float(rng.uniform(1.4, 2.1))
            t = 0.03
            sides = [_box(np.array([cx - ex, cy - ey, 0]), np.array([cx + ex, cy + ey, t])),
                     _box(np.array([cx - ex, cy - ey, h - t]), np.array([cx + ex, cy + ey, h]))]
            if wall in ("south", "north"):
                sides += [_box(np.array([cx - ex, cy - ey, 0]), np.array([cx - ex + t, cy + ey, h])),
                          _box(np.array([cx + ex - t, cy - ey, 0]), np.array([cx + ex, cy + ey, h]))]
            else:
                sides += [_box(np.array([cx - ex, cy - ey, 0]), np.array([cx + ex, cy - ey + t, h])),
                          _box(np.array([cx - ex, cy + ey - t, 0]), np.array([cx + ex, cy + ey, h]))]
            for z in np.linspace(0.4, h - 0.4, int(rng.integers(2, 4))):
                sides.append(_box(np.array([cx - ex, cy - ey, z]), np.array([cx + ex, cy + ey, z + t])))
                # Something on each board: a small box.
                bx = cx + rng.uniform(-0.5, 0.5) * ex
                by = cy + rng.uniform(-0.3, 0.3) * ey
                bh = float(rng.uniform(0.1, 0.3))
                sides.append(_box(np.array([bx - 0.08, by - 0.08, z + t]),
                                  np.array([bx + 0.08, by + 0.08, z + t + bh])))
            scene.add(f"shelf_{k}", *_merge(sides), mat)
        elif kind == "box":
            h = float(rng.uniform(0.4, 1.1))
            scene.add(f"box_{k}", *_box(np.array([cx - ex, cy - ey, 0]), np.array([cx + ex, cy + ey, h])), mat)
        elif kind == "stack":
            h1, h2 = float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.2, 0.4))
            parts = [_box(np.array([cx - ex, cy - ey, 0]), np.array([cx + ex, cy + ey, h1])),
                     _box(np.array([cx - ex * 0.6, cy - ey * 0.6, h1]),
                          np.array([cx + ex * 0.5, cy + ey * 0.6, h1 + h2]), float(rng.uniform(-0.4, 0.4)))]
            scene.add(f"stack_{k}", *_merge(parts), mat)
        else:
            r = min(ex, ey) * 0.9
            scene.add(f"cylinder_{k}", *_cylinder(np.array([cx, cy]), r, 0.0, float(rng.uniform(0.5, 1.4))), mat)
    return scene


# ----------------------------------------------------------------------------------------------------------------
# Trajectories


def look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """`T_world_cam` (OpenCV axes) at `eye` looking at `target` with world z up, rolled about the view axis."""
    f = target - eye
    f = f / np.linalg.norm(f)
    r = np.cross(f, _UP)
    r = r / np.linalg.norm(r)
    d = np.cross(f, r)
    if roll:
        c, s = math.cos(roll), math.sin(roll)
        r, d = c * r + s * d, -s * r + c * d
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = r, d, f, eye
    return T


def make_trajectory(kind: str, size: tuple[float, float, float], num_frames: int, fps: float,
                    seed: int, speed: float = 1.0) -> np.ndarray:
    """Camera-to-world poses [N,4,4] of one trajectory type.

    Speeds are hand-held: about 0.5-0.7 m/s and at most ~30 deg/s, i.e. a few cm and about 1 degree per frame
    at 30 fps, so frame-to-frame trackers see large overlaps; `speed` multiplies the motion per frame (fast
    motion). "loop" goes once round the room in `LOOP_SECONDS / speed` and is back at its start pose after it
    (every lap revisits the same places at the same height).
    """
    t = np.arange(num_frames) / fps
    return trajectory_at(kind, size, speed * t, seed, duration=speed * (t[-1] if len(t) else 0.0))


def trajectory_at(kind: str, size: tuple[float, float, float], t: np.ndarray, seed: int, duration: float
                  ) -> np.ndarray:
    """Poses [N,4,4] of a trajectory at times `t` (seconds at speed 1) of a sequence lasting `duration`.

    Only "forward" depends on the duration (its speed is capped so it stays in the room); sub-frame times (the
    motion blur's shutter interval) give poses between frames.
    """
    if kind not in TRAJECTORIES:
        raise ConfigError(f"trajectory must be one of {', '.join(TRAJECTORIES)}, got {kind!r}")
    rng = np.random.default_rng(seed + 7919)
    W, D, H = size
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    phase = float(rng.uniform(0, 2 * math.pi))
    poses = []
    if kind == "orbit":
        radius = float(rng.uniform(1.6, 1.9))
        omega = math.radians(rng.uniform(20.0, 26.0)) * (1 if rng.uniform() < 0.5 else -1)
        for ti in t:
            a = phase + omega * ti
            eye = np.array([radius * math.cos(a), radius * math.sin(a), 1.45 + 0.05 * math.sin(0.9 * ti)])
            target = np.array([0.0, 0.0, 0.75])
            poses.append(look_at(eye, target, roll=0.02 * math.sin(1.3 * ti)))
    elif kind == "walk":
        # A loop around the central table (radius wobbling between ~1.4 and ~1.9 m), head bob at step
        # frequency, gaze swinging between the path direction and the room centre.
        r0 = float(rng.uniform(1.55, 1.7))
        speed = float(rng.uniform(0.5, 0.6))
        direction = 1 if rng.uniform() < 0.5 else -1
        for ti in t:
            a = phase + direction * speed * ti / r0
            rad = r0 + 0.2 * math.sin(0.7 * ti + phase)
            eye = np.array([rad * math.cos(a), rad * math.sin(a) * (D / W) * 0.95, 1.5])
            eye[2] += 0.015 * math.sin(2 * math.pi * 1.8 * ti)  # head bob
            eye[:2] += 0.01 * np.array([math.sin(2 * math.pi * 0.9 * ti), math.cos(2 * math.pi * 0.9 * ti)])
            tangent = direction * np.array([-math.sin(a), math.cos(a), 0.0])
            inward = -np.array([math.cos(a), math.sin(a), 0.0])
            w = 0.75 + 0.2 * math.sin(2 * math.pi * ti / 9.0 + phase)  # gaze: 0 along the path, 1 at the centre
            gaze = (1 - w) * tangent + w * inward
            gaze /= np.linalg.norm(gaze)
            target = eye + 2.5 * gaze
            target[2] = 1.0 + 0.15 * math.sin(2 * math.pi * ti / 5.0)
            poses.append(look_at(eye, target, roll=0.03 * math.sin(2 * math.pi * 0.9 * ti)))
    elif kind == "loop":
        # A closed lap round the central table: everything (radius, gaze, roll) is periodic in the lap, the
        # eye height is constant, so after LOOP_SECONDS the camera is back at its start pose and view.
        r0 = float(rng.uniform(1.55, 1.7))
        direction = 1 if rng.uniform() < 0.5 else -1
        for ti in t:
            u = 2 * math.pi * ti / LOOP_SECONDS
            a = phase + direction * u
            rad = r0 + 0.15 * math.sin(2 * u + phase)
            eye = np.array([rad * math.cos(a), rad * math.sin(a) * (D / W) * 0.95, 1.5])
            tangent = direction * np.array([-math.sin(a), math.cos(a), 0.0])
            inward = -np.array([math.cos(a), math.sin(a), 0.0])
            w = 0.75 + 0.15 * math.sin(2 * u + phase)
            gaze = (1 - w) * tangent + w * inward
            gaze /= np.linalg.norm(gaze)
            target = eye + 2.5 * gaze
            target[2] = 1.0 + 0.15 * math.sin(3 * u)
            poses.append(look_at(eye, target, roll=0.03 * math.sin(4 * u)))
    else:
        # Mostly forward along the room's long (y) axis, beside the central table, gentle sway; the speed is
        # capped so the path stays inside the room for any length.
        x = float(rng.choice([-1.4, 1.4]))
        length = D - 2.6
        speed = min(0.6, length / max(duration if duration > 0 else 1.0, 1e-6))
        y0 = -length / 2
        for ti in t:
            bob = 0.01 * math.sin(2 * math.pi * 1.8 * ti)
            eye = np.array([x + 0.05 * math.sin(0.8 * ti), y0 + speed * ti, 1.4 + bob])
            yaw = 0.15 * math.sin(2 * math.pi * ti / 6.0 + phase) - 0.2 * np.sign(x)
            gaze = np.array([math.sin(yaw), math.cos(yaw), -0.12])
            poses.append(look_at(eye, eye + gaze, roll=0.02 * math.sin(1.1 * ti)))
    return np.stack(poses) if poses else np.zeros((0, 4, 4))


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def default_intrinsics(width: int, height: int, focal: float | None = None) -> np.ndarray:
    """Pinhole K with a ~64 degree horizontal field of view (or focal length `focal` in pixels) and the principal
    point at the image centre."""
    f = 0.8 * width if focal is None else float(focal)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


class Renderer:
    """Ray-casts one scene; `render(T_world_cam)` returns (rgb uint8 HxWx3, depth float32 HxW metres).

    Colour is averaged over `supersample`^2 rays per pixel (anti-aliasing keeps the texture stable between
    frames); depth comes from one extra ray through the pixel centre, so edges get no mixed "flying" depths.
    """

    def __init__(self, scene: Scene, K: np.ndarray, width: int, height: int, supersample: int = 2) -> None:
        import open3d as o3d

        self.scene = scene
        self.K = np.asarray(K, dtype=np.float64)
        self.width, self.height, self.ss = width, height, supersample
        self._rc = o3d.t.geometry.RaycastingScene()
        ids = []
        for v, tri in zip(scene.vertices, scene.triangles, strict=True):
            ids.append(self._rc.add_triangles(o3d.core.Tensor(v), o3d.core.Tensor(tri)))
        self._material_of_id = {gid: i for i, gid in enumerate(ids)}
        self._o3d = o3d
        # Camera-frame ray directions with z = 1, so t_hit of a centre ray is the depth directly.
        u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        offs = (np.arange(supersample) + 0.5) / supersample - 0.5
        ou, ov = np.meshgrid(offs, offs)
        su = (u[..., None] + ou.reshape(-1)).reshape(-1)
        sv = (v[..., None] + ov.reshape(-1)).reshape(-1)
        uu = np.concatenate([u.reshape(-1), su])
        vv = np.concatenate([v.reshape(-1), sv])
        self._dirs_cam = np.stack([(uu - self.K[0, 2]) / self.K[0, 0], (vv - self.K[1, 2]) / self.K[1, 1],
                                   np.ones_like(uu)], axis=1)
        self._light = np.array([0.3, -0.5, 0.81])
        self._light /= np.linalg.norm(self._light)

    def render(self, T_world_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rgb, depth, _ = self.render_with_incidence(T_world_cam)
        return rgb, depth

    def render_with_incidence(self, T_world_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb, depth, cos_incidence): the last is |cos| of the angle between each centre ray and the surface
        normal it hits (1 = head-on, 0 = grazing or no hit), which the depth sensor model needs."""
        n_pix = self.width * self.height
        R, tvec = T_world_cam[:3, :3], T_world_cam[:3, 3]
        dirs = self._dirs_cam @ R.T
        rays = np.concatenate([np.broadcast_to(tvec, dirs.shape), dirs], axis=1).astype(np.float32)
        hit = self._rc.cast_rays(self._o3d.core.Tensor(rays), nthreads=0)
        t_hit = hit["t_hit"].numpy().astype(np.float64)
        gids = hit["geometry_ids"].numpy()
        normals = hit["primitive_normals"].numpy().astype(np.float64)
        valid = np.isfinite(t_hit)
        depth = np.where(valid[:n_pix], t_hit[:n_pix], 0.0).reshape(self.height, self.width).astype(np.float32)
        d_c = dirs[:n_pix]
        cos_c = np.abs(np.einsum("ij,ij->i", normals[:n_pix], d_c)) / np.linalg.norm(d_c, axis=1)
        cos_c = np.where(valid[:n_pix], cos_c, 0.0).reshape(self.height, self.width).astype(np.float32)

        sub = slice(n_pix, None)
        t_s, g_s, n_s, d_s, ok = t_hit[sub], gids[sub], normals[sub], dirs[sub], valid[sub]
        pts = tvec + d_s * np.where(ok, t_s, 0.0)[:, None]
        # Surface length covered by one colour sample: distance / focal length, stretched at grazing angles.
        d_len = np.linalg.norm(d_s, axis=1)
        cos = np.abs(np.einsum("ij,ij->i", n_s, d_s)) / d_len
        footprint = np.where(ok, t_s, 0.0) * d_len / (self.K[0, 0] * self.ss) / np.maximum(cos, 0.15)
        albedo = np.zeros((len(t_s), 3))
        idx = np.flatnonzero(ok)
        order = idx[np.argsort(g_s[idx], kind="stable")]
        gsorted = g_s[order]
        bounds = np.flatnonzero(np.diff(gsorted)) + 1
        for chunk in np.split(order, bounds):
            if len(chunk):
                mi = self._material_of_id[int(g_s[chunk[0]])]
                albedo[chunk] = self.scene.materials[mi].shade(pts[chunk], footprint[chunk])
        # Two-sided Lambertian with a fixed light plus ambient: view independent, so colours are constant.
        lam = np.abs(n_s @ self._light)
        color = albedo * (0.45 + 0.55 * lam)[:, None]
        color = color.reshape(self.height, self.width, self.ss * self.ss, 3).mean(axis=2)
        rgb = np.clip(np.round(color * 255.0), 0, 255).astype(np.uint8)
        return rgb, depth, cos_c


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _stamp(t_us: int) -> str:
    sec, usec = divmod(t_us, 1_000_000)
    return f"{sec}.{usec:06d}"


BLUR_SAMPLES = 9  # poses averaged over the shutter interval


def _render_degraded(renderer: Renderer, deg: Degradations, trajectory: str, size: tuple[float, float, float],
                     seed: int, index: int, num_frames: int, fps: float, T: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Render frame `index` at pose T and apply the sensor degradations (identity when none are on)."""
    rgb, depth, cos = renderer.render_with_incidence(T)
    if not (deg.any_colour or deg.any_depth):
        return rgb, depth
    blurred = None
    if deg.motion_blur:
        t0 = index / fps
        offsets = np.linspace(-0.5, 0.5, BLUR_SAMPLES) * deg.motion_blur / fps
        duration = deg.speed * (num_frames - 1) / fps
        subs = trajectory_at(trajectory, size, deg.speed * (t0 + offsets), seed, duration)
        blurred = motion_blur(rgb, depth, renderer.K, T, subs)
    rgb = degrade_colour(rgb, deg, seed, index, index / fps, blurred)
    return rgb, degrade_depth(depth, cos, deg, seed, index)


def generate_sequence(out_dir: str | Path, *, seed: int = 0, trajectory: str = "walk", num_frames: int = 60,
                      width: int = 320, height: int = 240, fps: float = 30.0, supersample: int = 2,
                      rgb_format: str = "png", jpeg_quality: int = 92,
                      degradations: Degradations | None = None, focal: float | None = None) -> Path:
    """Render a synthetic RGB-D sequence with ground truth into `out_dir` (TUM RGB-D layout); returns the folder.

    Args:
        out_dir: folder to create (files in it are overwritten).
        seed: scene and trajectory seed; the output is a pure function of all arguments.
        trajectory: "walk" (hand-held), "orbit" (around the room centre, looking in) or "forward".
        num_frames, width, height, fps: sequence length, image size, frame rate (timestamps).
        supersample: rays per pixel side for colour anti-aliasing (1 = one ray per pixel).
        rgb_format: "png" (lossless) or "jpg" (about 6x smaller; the bundled sample uses it to stay light).
        jpeg_quality: JPEG quality when rgb_format is "jpg".
        degradations: sensor effects (depth noise and holes, motion blur, exposure, noise, JPEG, fast motion;
            `Degradations.realistic()` is the `--realistic` preset); ground truth stays exact. None: clean.
        focal: focal length in pixels (default 0.8 * width, which is also what the geometric backend assumes
            without intrinsics; a Kinect at 640x480 has about 525-585, i.e. 0.82-0.91 * width).
    """
    deg = degradations or Degradations()
    if rgb_format not in ("png", "jpg"):
        raise ConfigError(f"rgb_format must be 'png' or 'jpg', got {rgb_format!r}")
    if num_frames < 1:
        raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
    if width < 8 or height < 8:
        raise ConfigError(f"image size must be at least 8x8, got {width}x{height}")
    if fps <= 0:
        raise ConfigError(f"fps must be positive, got {fps}")
    if focal is not None and not focal > 0:
        raise ConfigError(f"focal must be positive, got {focal}")
    if supersample < 1:
        raise ConfigError(f"supersample must be >= 1, got {supersample}")
    out = Path(out_dir)
    try:
        (out / "rgb").mkdir(parents=True, exist_ok=True)
        (out / "depth").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SequenceError(f"cannot create {out}: {e}") from e

    scene = build_scene(seed)
    poses = make_trajectory(trajectory, scene.size, num_frames, fps, seed, speed=deg.speed)
    K = default_intrinsics(width, height, focal)
    renderer = Renderer(scene, K, width, height, supersample)
    t_us = [_T0_US + round(i * 1e6 / fps) for i in range(num_frames)]
    logger.info("rendering %d frames (%s, seed %d, %dx%d) into %s", num_frames, trajectory, seed, width, height, out)

    rgb_lines = ["# color images", "# synthetic sequence rendered by recon.datasets.synthetic", "# timestamp filename"]
    depth_lines = ["# depth maps", "# synthetic sequence rendered by recon.datasets.synthetic", "# timestamp filename"]
    png = [cv2.IMWRITE_PNG_COMPRESSION, 9]
    frames = progress(zip(poses, t_us, strict=True), total=num_frames, desc=f"rendering {out.name}", unit="frame")
    for i, (T, tu) in enumerate(frames):
        rgb, depth = _render_degraded(renderer, deg, trajectory, scene.size, seed, i, num_frames, fps, T)
        rgb_name, depth_name = f"{_stamp(tu)}.{rgb_format}", f"{_stamp(tu)}.png"
        depth_u16 = np.clip(np.round(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)
        rgb_opts = png if rgb_format == "png" else [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        ok = cv2.imwrite(str(out / "rgb" / rgb_name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), rgb_opts)
        ok = ok and cv2.imwrite(str(out / "depth" / depth_name), depth_u16, png)
        if not ok:
            raise SequenceError(f"cannot write frame {i} into {out}")
        rgb_lines.append(f"{_stamp(tu)} rgb/{rgb_name}")
        depth_lines.append(f"{_stamp(tu)} depth/{depth_name}")
        logger.debug("frame %d/%d rendered", i + 1, num_frames)
    frames.close()
    (out / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (out / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    write_tum_trajectory(out / "groundtruth.txt", np.asarray(t_us, dtype=np.int64) * 1000, poses)
    camera = {"width": width, "height": height, "K": K.tolist(), "depth_scale": DEPTH_SCALE,
              "distortion": [], "generator": {"module": __name__, "seed": seed, "trajectory": trajectory,
                                              "num_frames": num_frames, "fps": fps, "supersample": supersample,
                                              "rgb_format": rgb_format, "focal": focal,
                                              "jpeg_quality": jpeg_quality if rgb_format == "jpg" else None,
                                              "degradations": deg.to_dict()}}
    (out / "camera.json").write_text(json.dumps(camera, indent=2) + "\n")
    return out
