"""The `colmap` export: a COLMAP sparse model (cameras, images with every frame's pose, points3D from the map),
written with pycolmap, so COLMAP, 3D Gaussian Splatting, nerfstudio's colmap loader and friends take our poses.

Layout under `<run>/colmap/` (one such tree per stream when a run has several):

    images/<seq>.jpg          the frames' colours at the result resolution (the model's image names)
    sparse/0/                 cameras.bin, images.bin, points3D.bin (and rigs.bin, frames.bin of COLMAP >= 3.12)

Cameras are PINHOLE (fx, fy, cx, cy) at the result grid, one per distinct intrinsics; frames reach the sinks
undistorted, so no distortion model is needed. COLMAP stores `cam_from_world`, the inverse of our `T_world_cam`;
both use OpenCV camera axes. points3D are the map's voxel points with colours and empty tracks (no 2-D
observations: the model is for initialisation and pose hand-over, not for COLMAP's bundle adjustment as is).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recon.export.common import CameraLog, MapPoints, frame_stem, relocate, write_rgb
from recon.geometry.transforms import inv_se3
from recon.types import FrameResult
from recon.utils.imports import require_package

logger = logging.getLogger(__name__)


class ColmapWriter:
    """Sink writing a COLMAP sparse model into `folder` at close (images as results arrive)."""

    name = "export_colmap"

    def __init__(self, folder: str | Path, *, voxel_size: float | None = None, jpeg_quality: int = 95) -> None:
        require_package("pycolmap", extra="export")
        self.folder = Path(folder)
        self.jpeg_quality = int(jpeg_quality)
        self.cameras = CameraLog()
        self.map = MapPoints(voxel_size=voxel_size)
        self._closed = False
        self._written: dict[tuple[str, int], Path] = {}
        self.models: dict[str, Path] = {}

    def on_result(self, result: FrameResult) -> None:
        cam = self.cameras.add(result)
        if cam is None:
            return
        if result.image is not None and cam.image is None:
            # Images are written when they arrive, so nothing but poses and points is held until close.
            name = f"{frame_stem(cam.seq)}.jpg"
            path = self.cameras.stream_dir(self.folder, cam.stream_id) / "images" / name
            write_rgb(path, result.image, self.jpeg_quality)
            self._written[(cam.stream_id, cam.seq)] = path
            cam.image = name
        self.map.add(result)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pycolmap = require_package("pycolmap", extra="export")
        for stream_id in self.cameras.stream_ids:
            root = self.cameras.stream_dir(self.folder, stream_id)
            rec = pycolmap.Reconstruction()
            camera_ids: dict[tuple, int] = {}
            for image_id, cam in enumerate(self.cameras.frames(stream_id), start=1):
                if cam.image is not None:
                    relocate(self._written[(stream_id, cam.seq)], root / "images" / cam.image)
                fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]
                key = (cam.width, cam.height, *np.round([fx, fy, cx, cy], 6))
                camera_id = camera_ids.get(key)
                if camera_id is None:
                    camera_id = camera_ids[key] = len(camera_ids) + 1
                    # COLMAP's pixel centres are at +0.5 (the image corner is 0,0); ours are at integers.
                    rec.add_camera_with_trivial_rig(pycolmap.Camera(
                        model="PINHOLE", width=cam.width, height=cam.height,
                        params=[fx, fy, cx + 0.5, cy + 0.5], camera_id=camera_id))
                image = pycolmap.Image(name=cam.image or f"{frame_stem(cam.seq)}.jpg", camera_id=camera_id,
                                       image_id=image_id)
                cam_from_world = inv_se3(cam.T_world_cam)
                rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(cam_from_world[:3, :]))
            xyz, rgb = self.map.points(stream_id)
            track = pycolmap.Track()
            for p, c in zip(xyz, rgb, strict=True):
                rec.add_point3D(p, track, c)
            model = root / "sparse" / "0"
            model.mkdir(parents=True, exist_ok=True)
            rec.write(str(model))
            self.models[stream_id] = model
            logger.info("COLMAP model %s: %d images, %d cameras, %d points", model, rec.num_images(),
                        rec.num_cameras(), rec.num_points3D())
