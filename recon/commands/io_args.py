"""Input and export flags shared by `recon replay`, `recon live` and `recon node camera`.

- `--topic`, `--depth-topic`, `--camera-info-topic`: which topics of a ROS bag to read (recon.nodes.cli_util, shared
  with the camera node's entry point);
- `--camera-info FILE` (replay; live and the camera node have their own): a calibration file that replaces the
  sequence's intrinsics, fitted to the image size;
- `--export FORMATS`: the result exports of `recon.export` written into the run folder (default: frames, the record
  `recon export` rebuilds the other formats from).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_io_arguments(parser: argparse.ArgumentParser, *, camera_info: bool) -> None:
    """The input and export flags of replay (`camera_info=True`) and live (which has its own --camera-info)."""
    from recon.export import DEFAULT_EXPORT, FORMATS
    from recon.nodes.cli_util import add_topic_arguments

    group = parser.add_argument_group("bags, calibration and exports")
    add_topic_arguments(group)
    if camera_info:
        group.add_argument("--camera-info", default=None, metavar="FILE",
                           help="calibration that replaces the sequence's own: ROS camera_info YAML (what `recon "
                                "calib` writes), OpenCV YAML/XML, camera.json; scaled to the images if needed")
    group.add_argument("--export", default=DEFAULT_EXPORT, metavar="FORMATS",
                       help=f"comma-separated result exports into the output folder: {', '.join(FORMATS)}, all, "
                            f"or none (default {DEFAULT_EXPORT}: the per-frame record `recon export` reads)")


def apply_camera_info(sequence: Any, args: argparse.Namespace) -> Any:
    """`sequence` with the intrinsics of `--camera-info` (unchanged without the flag)."""
    path = getattr(args, "camera_info", None)
    if not path:
        return sequence
    from recon.datasets.base import CalibratedSequence
    from recon.nodes.sources import load_camera_info

    return CalibratedSequence(sequence, load_camera_info(path))


def export_sinks(args: argparse.Namespace, out: Path, **options: Any) -> list[Any]:
    """The sinks of `--export`, writing into the run folder `out`."""
    from recon.export import create_export_sinks

    return create_export_sinks(getattr(args, "export", None), out, **options)


def export_outputs(sinks: list[Any]) -> dict[str, str]:
    """Summary entries (`export_<format>` -> folder or file) of the export sinks."""
    return {sink.name: str(getattr(sink, "folder", None) or sink.path) for sink in sinks}
