"""recon.export: the run's results in the formats other tools read, each a result sink.

    recon replay SEQ --export colmap,nerfstudio,mesh,frames,mcap     # during the run (frames is the default)
    recon export runs/SEQ --format colmap,mesh                       # later, from the run's frames record

| format       | written to (in the run folder) | read by |
|---|---|---|
| `frames`     | `frames/`: colour, depth (16-bit mm PNG or npy), camera JSON per frame | numpy, cv2, `recon export` |
| `colmap`     | `colmap/sparse/0/*.bin`, `colmap/images/` | COLMAP, pycolmap, 3DGS |
| `nerfstudio` | `nerfstudio/transforms.json`, images, depth, `sparse_pc.ply` | nerfstudio (`ns-train ... --data`) |
| `mesh`       | `mesh/mesh.ply`, `mesh/mesh.glb` (TSDF fusion) | Open3D, Blender, MeshLab, glTF viewers |
| `mcap`       | `recording.mcap` (Foxglove schemas, protobuf) | Foxglove, `mcap` library |

Every export applies pose updates (same `seq`, newer pose wins) and leaves untracked frames out. The frames record
is what `recon export` rebuilds the others from, so a run exported later gets the same poses and geometry (images and
depth pass through JPEG / millimetre rounding in between).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recon.errors import ConfigError

logger = logging.getLogger(__name__)

# name -> (where in the run folder, what it is)
FORMATS: dict[str, tuple[str, str]] = {
    "frames": ("frames", "per-frame colour, depth (16-bit mm PNG / float npy) and camera (K, T_world_cam) files"),
    "colmap": ("colmap", "COLMAP sparse model (cameras, images, points3D) for COLMAP / 3DGS tools"),
    "nerfstudio": ("nerfstudio", "nerfstudio transforms.json (OpenGL cameras, per-frame intrinsics, depth, ply)"),
    "mesh": ("mesh", "TSDF mesh of the RGB-D map (PLY and GLB)"),
    "mcap": ("recording.mcap", "MCAP with Foxglove schemas: poses, transforms, images, depth, point clouds"),
}
DEFAULT_EXPORT = "frames"


def parse_export_formats(text: str | Iterable[str] | None) -> list[str]:
    """`colmap,mesh` / `all` / `none` (or a list) -> format names in FORMATS order; ConfigError names the choices."""
    if text is None:
        return []
    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    if parts == ["none"]:
        return []
    if "all" in parts:
        return list(FORMATS)
    unknown = [p for p in parts if p not in FORMATS]
    if unknown or "none" in parts:
        raise ConfigError(f"--export {text!r}: unknown format {', '.join(unknown) or 'none (alone only)'}; choose "
                          f"from {', '.join(FORMATS)}, all or none")
    return [f for f in FORMATS if f in parts]


def create_export_sink(fmt: str, run_dir: str | Path, **options: Any) -> Any:
    """The sink of one format writing into its place in `run_dir` (see FORMATS)."""
    target = Path(run_dir) / FORMATS[fmt][0]
    voxel = options.get("voxel_size")
    if fmt == "frames":
        from recon.export.frames import FramesWriter

        return FramesWriter(target)
    if fmt == "colmap":
        from recon.export.colmap import ColmapWriter

        return ColmapWriter(target, voxel_size=voxel)
    if fmt == "nerfstudio":
        from recon.export.nerfstudio import NerfstudioWriter

        return NerfstudioWriter(target, voxel_size=voxel)
    if fmt == "mesh":
        from recon.export.mesh import MeshWriter

        return MeshWriter(target, voxel_size=options.get("mesh_voxel_size"))
    if fmt == "mcap":
        from recon.export.mcap import McapWriter

        return McapWriter(target)
    raise ConfigError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


def create_export_sinks(formats: str | Iterable[str] | None, run_dir: str | Path, **options: Any) -> list[Any]:
    """One sink per requested format (`parse_export_formats`), writing into `run_dir`."""
    return [create_export_sink(f, run_dir, **options) for f in parse_export_formats(formats)]


def export_paths(run_dir: str | Path, formats: Iterable[str]) -> dict[str, str]:
    """Where each format's output lands in `run_dir` (for run summaries)."""
    return {f"export_{f}": str(Path(run_dir) / FORMATS[f][0]) for f in formats}


def export_run(run_dir: str | Path, formats: str | Iterable[str], out: str | Path | None = None,
               **options: Any) -> dict[str, str]:
    """Rebuild exports of a finished run from its frames record (`<run_dir>/frames`); returns format -> path.

    `out` (default `run_dir`) is where they are written, laid out as during a run.
    """
    from recon.export.frames import read_frames

    names = [f for f in parse_export_formats(formats) if f != "frames" or out is not None]
    if not names:
        raise ConfigError("nothing to export: the frames record is the run's own (give --out to copy it elsewhere)")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    records = read_frames(run_dir)
    if not records:
        raise ConfigError(f"{run_dir}: the frames record holds no tracked frame: nothing to export")
    sinks = [create_export_sink(f, out, **options) for f in names]
    from recon.sinks.base import SinkGroup

    group = SinkGroup(sinks)
    try:
        for record in records:
            group.on_result(record.result())
    finally:
        group.close()
    logger.info("exported %d frames of %s as %s", len(records), run_dir, ", ".join(names))
    return {f: str(out / FORMATS[f][0]) for f in names}
