"""The `mesh` export: a triangle mesh of the RGB-D map by TSDF fusion (Open3D's VoxelBlockGrid), as PLY and GLB.

Every tracked frame with depth is fused with its *final* pose, so pose updates count: depth and colours are
spooled to `<folder>/.spool/` as results arrive (bounded memory) and fused at close, then the spool is removed.

Layout under `<run>/mesh/`: `mesh.ply` (vertex colours and normals) and `mesh.glb` (one per stream,
`mesh.<stream>.ply`, when a run has several). Parameters, when not given: voxel 1% of the first frame's median depth
(what points.ply uses), truncation 4 voxels, depth beyond the 99th percentile of the first frame's depth x 1.5 ignored.
Up-to-scale runs are fused in their own scale (the mesh has the trajectory's arbitrary unit).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from recon.errors import ConfigError
from recon.export.common import CameraLog, frame_stem, safe_name
from recon.geometry.transforms import inv_se3
from recon.types import FrameResult
from recon.utils.imports import require_package

logger = logging.getLogger(__name__)


class MeshWriter:
    """Sink fusing depth into a TSDF at close and writing the extracted mesh into `folder`."""

    name = "export_mesh"

    def __init__(self, folder: str | Path, *, voxel_size: float | None = None, depth_max: float | None = None,
                 formats: tuple[str, ...] = ("ply", "glb")) -> None:
        if voxel_size is not None and not voxel_size > 0:
            raise ConfigError(f"mesh voxel size must be positive, got {voxel_size!r}")
        bad = set(formats) - {"ply", "glb", "obj"}
        if bad:
            raise ConfigError(f"mesh formats must be ply, glb or obj, got {sorted(bad)}")
        self.folder = Path(folder)
        self.spool = self.folder / ".spool"
        self.voxel_size = voxel_size
        self.depth_max = depth_max
        self.formats = formats
        self.cameras = CameraLog()
        self._spooled: set[tuple[str, int]] = set()
        self._closed = False
        self.paths: list[Path] = []
        self.triangles: dict[str, int] = {}

    def _spool_path(self, stream_id: str, seq: int) -> Path:
        return self.spool / f"{safe_name(stream_id)}_{frame_stem(seq)}.npz"

    def on_result(self, result: FrameResult) -> None:
        cam = self.cameras.add(result)
        if cam is None or result.depth is None:
            return
        key = (cam.stream_id, cam.seq)
        if key in self._spooled and not result.is_update:
            return
        self.spool.mkdir(parents=True, exist_ok=True)
        colour = result.image if result.image is not None else np.full((*np.shape(result.depth), 3), 160, np.uint8)
        np.savez(self._spool_path(*key), depth=np.asarray(result.depth, np.float32), colour=np.asarray(colour))
        self._spooled.add(key)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for stream_id in self.cameras.stream_ids:
                self._fuse(stream_id)
        finally:
            shutil.rmtree(self.spool, ignore_errors=True)

    def _fuse(self, stream_id: str) -> None:
        import open3d as o3d
        import open3d.core as o3c

        frames = [c for c in self.cameras.frames(stream_id) if (stream_id, c.seq) in self._spooled]
        if not frames:
            logger.warning("mesh: stream %s has no frame with depth: no mesh", stream_id)
            return
        grid = None
        depth_max = 0.0
        for cam in frames:
            with np.load(self._spool_path(stream_id, cam.seq)) as data:
                depth, colour = data["depth"], data["colour"]
            if grid is None:
                voxel, depth_max = self._parameters(depth)
                # The tensor VoxelBlockGrid (Open3D's current TSDF integration; the hash map grows as needed).
                grid = o3d.t.geometry.VoxelBlockGrid(
                    attr_names=("tsdf", "weight", "color"), attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
                    attr_channels=((1), (1), (3)), voxel_size=voxel, block_resolution=8, block_count=20_000)
                logger.info("mesh %s: TSDF voxel %.4g, truncation %.4g, depth up to %.4g", stream_id, voxel,
                            4 * voxel, depth_max)
            if colour.shape[:2] != depth.shape:
                import cv2

                colour = cv2.resize(colour, (depth.shape[1], depth.shape[0]), interpolation=cv2.INTER_AREA)
            d = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(np.nan_to_num(depth, nan=0.0), np.float32)))
            c = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(colour, np.float32) / 255.0))
            K = o3c.Tensor(np.asarray(cam.K, np.float64))
            E = o3c.Tensor(np.ascontiguousarray(inv_se3(cam.T_world_cam)))  # extrinsic: world -> camera
            blocks = grid.compute_unique_block_coordinates(d, K, E, 1.0, depth_max, trunc_voxel_multiplier=4.0)
            grid.integrate(blocks, d, c, K, E, 1.0, depth_max, trunc_voxel_multiplier=4.0)
        # A surface seen in at least 3 frames (or in all of them, for shorter runs) is kept: single-view noise is not.
        mesh = grid.extract_triangle_mesh(weight_threshold=float(min(3, len(frames)))).to_legacy()
        mesh.compute_vertex_normals()
        self.triangles[stream_id] = len(mesh.triangles)
        if len(mesh.triangles) == 0:
            logger.warning("mesh %s: TSDF fusion of %d frames gave no surface", stream_id, len(frames))
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = "mesh" if len(self.cameras.stream_ids) <= 1 else f"mesh.{safe_name(stream_id)}"
        for fmt in self.formats:
            path = self.folder / f"{stem}.{fmt}"
            if fmt == "glb":
                _write_glb(path, mesh)
            elif not o3d.io.write_triangle_mesh(str(path), mesh, write_vertex_colors=True):
                raise OSError(f"open3d could not write {path}")
            self.paths.append(path)
        logger.info("mesh %s: %d frames fused, %d vertices, %d triangles -> %s", stream_id, len(frames),
                    len(mesh.vertices), len(mesh.triangles), ", ".join(str(p) for p in self.paths))

    def _parameters(self, depth: np.ndarray) -> tuple[float, float]:
        valid = depth[np.isfinite(depth) & (depth > 0)]
        if valid.size == 0:
            median, far = 1.0, 10.0
        else:
            median, far = float(np.median(valid)), float(np.quantile(valid, 0.99))
        voxel = self.voxel_size or 0.01 * median
        return voxel, self.depth_max or 1.5 * far


def _write_glb(path: Path, mesh: object) -> None:
    """Binary glTF with trimesh: Open3D 0.20's own GLB writer puts float buffer views at unaligned offsets, which
    glTF forbids and its own reader (Assimp) rejects."""
    trimesh = require_package("trimesh", extra="export")
    vertices = np.asarray(mesh.vertices)  # type: ignore[attr-defined]
    colours = np.clip(np.round(np.asarray(mesh.vertex_colors) * 255), 0, 255).astype(np.uint8)  # type: ignore
    tm = trimesh.Trimesh(vertices, np.asarray(mesh.triangles), vertex_normals=np.asarray(mesh.vertex_normals),  # type: ignore
                         vertex_colors=colours if len(colours) == len(vertices) else None, process=False)
    tm.export(str(path), file_type="glb")
