"""Input and export flags shared by `recon replay`, `recon live` and `recon node camera`.

- `--topic`, `--depth-topic`, `--camera-info-topic`: which topics of a ROS bag to read (default: chosen by message
  type, see `recon.datasets.bag`); `none` turns depth or the bag's CameraInfo off;
- `--camera-info FILE` (replay; live and the camera node have their own): a calibration file that replaces the
  sequence's intrinsics, fitted to the image size;
- `--export FORMATS`: the result exports of `recon.export` written into the run folder (default: frames, the record
  `recon export` rebuilds the other formats from).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_topic_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """`--topic`, `--depth-topic`, `--camera-info-topic` (bags)."""
    parser.add_argument("--topic", default=None, metavar="TOPIC",
                        help="bags: colour image topic (default: the Image/CompressedImage topic with a colour "
                             "encoding)")
    parser.add_argument("--depth-topic", default=None, metavar="TOPIC",
                        help="bags: depth topic registered to the colour image, 16UC1/32FC1/compressedDepth "
                             "(default: the one in the colour camera's frame or named aligned/registered; none: "
                             "no depth)")
    parser.add_argument("--camera-info-topic", default=None, metavar="TOPIC",
                        help="bags: CameraInfo topic (default: the one next to the colour topic; none: ignore it)")


def add_io_arguments(parser: argparse.ArgumentParser, *, camera_info: bool) -> None:
    """The input and export flags of replay (`camera_info=True`) and live (which has its own --camera-info)."""
    from recon.export import DEFAULT_EXPORT, FORMATS

    group = parser.add_argument_group("bags, calibration and exports")
    add_topic_arguments(group)
    if camera_info:
        group.add_argument("--camera-info", default=None, metavar="FILE",
                           help="calibration that replaces the sequence's own: ROS camera_info YAML (what `recon "
                                "calib` writes), OpenCV YAML/XML, camera.json; scaled to the images if needed")
    group.add_argument("--export", default=DEFAULT_EXPORT, metavar="FORMATS",
                       help=f"comma-separated result exports into the output folder: {', '.join(FORMATS)}, all, "
                            f"or none (default {DEFAULT_EXPORT}: the per-frame record `recon export` reads)")


def topic_options(args: argparse.Namespace) -> dict[str, str]:
    """The bag topic options that were given (`none` -> "" = off), as keywords of `open_sequence`/`open_source`."""
    out = {}
    for name in ("topic", "depth_topic", "camera_info_topic"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = "" if value.lower() == "none" and name != "topic" else value
    return out


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
