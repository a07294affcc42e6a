"""The `nerfstudio` export: `transforms.json` in nerfstudio's data format, with the images, depth and a point cloud.

Layout under `<run>/nerfstudio/` (one such tree per stream when a run has several):

    transforms.json     camera_model OPENCV (zero coefficients: frames reach the sinks undistorted), and per frame
                        file_path, fl_x, fl_y, cx, cy, w, h (per-frame intrinsics), transform_matrix and, for metric
                        runs, depth_file_path; `ply_file_path` names the initial point cloud (splatfacto reads it)
    images/<seq>.jpg    the frames' colours at the result resolution
    depth/<seq>.png     metric depth, 16-bit millimetres (nerfstudio's default depth_unit_scale_factor 1e-3)
    sparse_pc.ply       the map's voxel points with colours

Conventions (nerfstudio's data conventions page): `transform_matrix` is camera-to-world in the OpenGL/Blender camera
convention (+x right, +y up, +z backwards), i.e. our OpenCV `T_world_cam` with its y and z axes negated; pixel
coordinates have the image corner at 0 (COLMAP's), so cx, cy are ours + 0.5. The world frame is ours (the first
camera's); nerfstudio re-orients and re-centres it by default. `NERFSTUDIO_SCHEMA` is the JSON Schema of what we
write, checked in the tests.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from recon.export.common import CameraLog, MapPoints, frame_stem, relocate, write_depth_mm, write_rgb
from recon.geometry.transforms import OPENCV_TO_OPENGL
from recon.types import FrameResult

logger = logging.getLogger(__name__)

_NUMBER = {"type": "number"}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_PIXELS = {"type": "integer", "minimum": 1}
_MATRIX_44 = {"type": "array", "minItems": 4, "maxItems": 4,
              "items": {"type": "array", "minItems": 4, "maxItems": 4, "items": _NUMBER}}

NERFSTUDIO_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "nerfstudio transforms.json (the fields recon writes)",
    "type": "object",
    "required": ["camera_model", "frames"],
    "properties": {
        "camera_model": {"enum": ["OPENCV", "OPENCV_FISHEYE", "PINHOLE", "SIMPLE_PINHOLE", "EQUIRECTANGULAR"]},
        "fl_x": _POSITIVE, "fl_y": _POSITIVE, "cx": _NUMBER, "cy": _NUMBER, "w": _PIXELS, "h": _PIXELS,
        "k1": _NUMBER, "k2": _NUMBER, "k3": _NUMBER, "k4": _NUMBER, "p1": _NUMBER, "p2": _NUMBER,
        "ply_file_path": {"type": "string", "minLength": 1},
        "depth_unit_scale_factor": _POSITIVE,
        "frames": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object",
                "required": ["file_path", "transform_matrix", "fl_x", "fl_y", "cx", "cy", "w", "h"],
                "properties": {
                    "file_path": {"type": "string", "minLength": 1},
                    "depth_file_path": {"type": "string", "minLength": 1},
                    "mask_path": {"type": "string", "minLength": 1},
                    "transform_matrix": _MATRIX_44,
                    "fl_x": _POSITIVE, "fl_y": _POSITIVE, "cx": _NUMBER, "cy": _NUMBER, "w": _PIXELS, "h": _PIXELS,
                },
            },
        },
    },
}


class NerfstudioWriter:
    """Sink writing a nerfstudio dataset into `folder` (images and depth as results arrive, JSON at close)."""

    name = "export_nerfstudio"

    def __init__(self, folder: str | Path, *, voxel_size: float | None = None, jpeg_quality: int = 95) -> None:
        self.folder = Path(folder)
        self.jpeg_quality = int(jpeg_quality)
        self.cameras = CameraLog()
        self.map = MapPoints(voxel_size=voxel_size)
        self._written: dict[tuple[str, int], list[tuple[Path, str]]] = {}
        self._closed = False
        self.paths: dict[str, Path] = {}

    def on_result(self, result: FrameResult) -> None:
        cam = self.cameras.add(result)
        if cam is None:
            return
        root = self.cameras.stream_dir(self.folder, cam.stream_id)
        written = self._written.setdefault((cam.stream_id, cam.seq), [])
        stem = frame_stem(cam.seq)
        if result.image is not None and cam.image is None:
            cam.image = f"images/{stem}.jpg"
            write_rgb(root / cam.image, result.image, self.jpeg_quality)
            written.append((root / cam.image, cam.image))
        if result.depth is not None and result.metric and (cam.depth is None or result.is_update):
            cam.depth = f"depth/{stem}.png"
            write_depth_mm(root / cam.depth, result.depth)
            written.append((root / cam.depth, cam.depth))
        self.map.add(result)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream_id in self.cameras.stream_ids:
            root = self.cameras.stream_dir(self.folder, stream_id)
            frames = []
            for cam in self.cameras.frames(stream_id):
                for path, rel in self._written.get((stream_id, cam.seq), []):
                    relocate(path, root / rel)
                if cam.image is None:
                    continue  # nerfstudio needs an image per frame
                entry: dict[str, Any] = {
                    "file_path": cam.image,
                    "transform_matrix": (cam.T_world_cam @ OPENCV_TO_OPENGL).tolist(),
                    "fl_x": float(cam.K[0, 0]), "fl_y": float(cam.K[1, 1]),
                    "cx": float(cam.K[0, 2]) + 0.5, "cy": float(cam.K[1, 2]) + 0.5, "w": cam.width, "h": cam.height,
                    "recon_seq": cam.seq, "recon_t_ns": cam.t_ns,
                }
                if cam.depth is not None:
                    entry["depth_file_path"] = cam.depth
                frames.append(entry)
            if not frames:
                logger.warning("nerfstudio: stream %s has no frame with an image: no transforms.json", stream_id)
                continue
            first = frames[0]
            data: dict[str, Any] = {"camera_model": "OPENCV", **{k: first[k] for k in ("fl_x", "fl_y", "cx", "cy",
                                                                                         "w", "h")},
                                    "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}
            if any("depth_file_path" in f for f in frames):
                data["depth_unit_scale_factor"] = 1e-3
            if self.map.write_ply(stream_id, root / "sparse_pc.ply"):
                data["ply_file_path"] = "sparse_pc.ply"
            data["frames"] = frames
            path = root / "transforms.json"
            root.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2))
            self.paths[stream_id] = path
            logger.info("nerfstudio transforms %s: %d frames", path, len(frames))
