"""`recon export RUN_DIR --format ...`: write a finished run's results in other tools' formats.

Examples:
    recon export runs/sample --format colmap                 # runs/sample/colmap/sparse/0 for COLMAP / 3DGS
    recon export runs/sample --format nerfstudio,mesh        # transforms.json; TSDF mesh.ply / mesh.glb
    recon export runs/sample --format all --out /data/sample_exports

The run folder must hold the frames record (`frames/`, written by `recon replay` and `recon live` unless
`--export none`); every format is rebuilt from it with the final poses. The same formats can be written during the
run with `recon replay ... --export colmap,nerfstudio,mesh,mcap`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a finished run as COLMAP, nerfstudio, mesh, MCAP or per-frame files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recon.export import FORMATS

    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="output folder of a run (holding frames/)")
    choices = "; ".join(f"{name}: {text}" for name, (_, text) in FORMATS.items())
    parser.add_argument("--format", "-f", required=True, metavar="FORMATS",
                        help=f"comma-separated, or all. {choices}")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="where to write (default: RUN_DIR, laid out as during a run)")
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="point-cloud voxel of the COLMAP / nerfstudio points in scene units (default: 1%% of "
                             "the first frame's median depth)")
    parser.add_argument("--mesh-voxel", type=float, default=None,
                        help="TSDF voxel of the mesh in scene units (default: 1%% of the first frame's median depth)")


def run(args: argparse.Namespace) -> int:
    from recon.errors import ConfigError
    from recon.export import export_run

    for name in ("voxel_size", "mesh_voxel"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if not args.run_dir.is_dir():
        raise ConfigError(f"{args.run_dir}: no such run folder")
    written = export_run(args.run_dir, args.format, args.out, voxel_size=args.voxel_size,
                         mesh_voxel_size=args.mesh_voxel)
    for fmt, path in written.items():
        print(f"  {fmt:<11} {path}")
    return 0
