"""Tests of the weight-free `geometric` backend on tiny ray-cast scenes with ground truth."""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# A tiny self-contained scene (textured room with boxes, ray-cast with open3d) so these tests never depend on
# the dataset generator; the sequences are deterministic from a seed.


def _hash01(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice cell."""
    h = (ix.astype(np.uint64) * np.uint64(73856093)) ^ (iy.astype(np.uint64) * np.uint64(19349663))
    h ^= iz.astype(np.uint64) * np.uint64(83492791) + np.uint64(salt * 2654435761 % (1 << 32))
    h ^= h >> np.uint64(13)
    h *= np.uint64(0x5BD1E995)
    h ^= h >> np.uint64(15)
    return (h & np.uint64(0xFFFF)).astype(np.float64) / 65536.0


def _texture(p: np.ndarray, seed: int) -> np.ndarray:
    """RGB in [0,1] of world points nx3: flat random-coloured cells (sharp corners) plus fine value noise."""
    cells = np.floor((p + 0.1234) / 0.3).astype(np.int64) + 1000
    base = np.stack([_hash01(cells[:, 0], cells[:, 1], cells[:, 2], seed * 3 + c) for c in range(3)], axis=1)
    q = (p + 0.037) / 0.08
    i0 = np.floor(q).astype(np.int64) + 100000
    f = q - np.floor(q)
    f = f * f * (3 - 2 * f)
    noise = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = ((f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
                     * (f[:, 2] if dz else 1 - f[:, 2]))
                noise += w * _hash01(i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz, seed + 17)
    return np.clip(0.15 + 0.6 * base + 0.35 * (noise[:, None] - 0.5), 0.0, 1.0)


def _look_at(c: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world pose (OpenCV axes, world y pointing down) at `c` looking at `target`."""
    z = target - c
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = c
    return T


def make_trajectory(kind: str, n: int, seed: int) -> np.ndarray:
    """Ground-truth camera-to-world poses [n,4,4] of a hand-held walk, an orbit or a forward motion."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n)
    if kind == "walk":
        ph = rng.uniform(0, 2 * np.pi, 6)
        c = np.stack([-0.8 + 1.4 * t + 0.1 * np.sin(3 * t + ph[0]), 0.1 * np.sin(5 * t + ph[1]),
                      -0.5 + 0.3 * np.sin(2 * t + ph[2])], axis=1)
        yaw = 0.35 * np.sin(2.5 * t + ph[3])
        target = np.stack([c[:, 0] + 3 * np.sin(yaw), 0.2 * np.sin(3 * t + ph[4]) + np.zeros(n),
                           c[:, 2] + 3 * np.cos(yaw)], axis=1)
    elif kind == "orbit":
        a = rng.uniform(-0.4, 0.4) + np.pi + 1.1 * t
        c = np.stack([1.6 * np.sin(a), -0.2 + 0.05 * np.sin(4 * t), 1.6 * np.cos(a)], axis=1)
        target = np.tile(np.array([0.0, 0.3, 0.0]), (n, 1))
    elif kind == "forward":
        c = np.stack([0.1 * np.sin(4 * t), 0.05 * np.sin(6 * t), -1.5 + 1.6 * t], axis=1)
        target = c + np.stack([0.2 * np.sin(3 * t), 0.1 * np.cos(2 * t) + 0.1, np.full(n, 3.0)], axis=1)
    else:
        raise ValueError(kind)
    return np.stack([_look_at(c[i], target[i]) for i in range(n)])


def render_sequence(kind: str = "walk", n: int = 40, seed: int = 0, width: int = 160, height: int = 120
                    ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """(rgb list, depth list, K, poses[n,4,4]) of a room 8x3x6 m with a few boxes, ray-cast with open3d."""
    import open3d as o3d

    rng = np.random.default_rng(seed + 1000)
    scene = o3d.t.geometry.RaycastingScene()
    room = o3d.geometry.TriangleMesh.create_box(8.0, 3.0, 7.0).translate((-4.0, -1.5, -3.5))
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(room))
    for _ in range(6):
        size = rng.uniform(0.3, 0.9, 3)
        pos = np.array([rng.uniform(-3, 3), 1.5 - size[1], rng.uniform(1.0, 3.0) * rng.choice([-1, 1])])
        box = o3d.geometry.TriangleMesh.create_box(*size).translate(pos)
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(box))
    centre = o3d.geometry.TriangleMesh.create_box(0.6, 0.8, 0.6).translate((-0.3, 0.7, -0.3))
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(centre))

    f = 0.8 * width
    K = np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    # 2x2 supersampling: colours are box-filtered like a real sensor; depth is taken at the pixel centre.
    offsets = [(0.0, 0.0), (-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)]
    dirs = [np.stack([(u + du - K[0, 2]) / f, (v + dv - K[1, 2]) / f, np.ones_like(u)], -1).reshape(-1, 3)
            for du, dv in offsets]
    poses = make_trajectory(kind, n, seed)
    rgbs, depths = [], []
    for T in poses:
        colour = np.zeros((width * height, 3))
        for k, d_cam in enumerate(dirs):
            d_world = d_cam @ T[:3, :3].T
            rays = np.concatenate([np.broadcast_to(T[:3, 3], d_world.shape), d_world], axis=1).astype(np.float32)
            t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy().astype(np.float64)
            if k == 0:
                depths.append(t_hit.reshape(height, width).astype(np.float32))  # rays have z = 1 in the camera
            else:
                colour += _texture(T[:3, 3] + d_world * t_hit[:, None], seed) / 4
        rgbs.append((colour * 255).astype(np.uint8).reshape(height, width, 3))
    return rgbs, depths, K, poses
