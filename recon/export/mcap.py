"""The `mcap` export: the run's results as an MCAP file with Foxglove's well-known schemas (protobuf encoding),
written with the `mcap` library, for Foxglove and any MCAP tool.

Topics (`<s>` is the stream id; frames: `world` is the stream's world frame, `<s>/camera` its camera, OpenCV axes):

    /tf                       foxglove.FrameTransforms   world -> <s>/camera, T_world_cam of each frame
    /recon/<s>/pose           foxglove.PoseInFrame       camera pose in `world`
    /recon/<s>/calibration    foxglove.CameraCalibration K, P (row-major), size of the result grid, no distortion
    /recon/<s>/image          foxglove.CompressedImage   JPEG colours of the result grid, frame <s>/camera
    /recon/<s>/depth          foxglove.RawImage          32FC1 depth along the optical axis (metres when metric)
    /recon/<s>/points         foxglove.PointCloud        this frame's points in `world` (x, y, z float32; r, g, b, a)
    /recon/<s>/path           foxglove.PosesInFrame      the final trajectory, once at the end (updates applied)

Message timestamps are capture times (`t_ns`); log times too, except for revised poses (`is_update`), which are
logged at the newest capture time seen so far, when the correction became known, with their own capture time inside.
Untracked results are not written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from recon.export.common import CameraLog
from recon.geometry.transforms import rotmat_to_quat_xyzw
from recon.sinks.points import DEFAULT_SELECTION, PointSelection, select_points
from recon.types import FrameResult
from recon.utils.imports import require_package

logger = logging.getLogger(__name__)

SCHEMAS = ("foxglove.FrameTransforms", "foxglove.PoseInFrame", "foxglove.CameraCalibration",
           "foxglove.CompressedImage", "foxglove.RawImage", "foxglove.PointCloud", "foxglove.PosesInFrame")


def _fox() -> dict[str, Any]:
    """Foxglove's protobuf message classes by name."""
    require_package("foxglove_schemas_protobuf", extra="export", pip_name="foxglove-schemas-protobuf")
    from foxglove_schemas_protobuf import (
        CameraCalibration_pb2,
        CompressedImage_pb2,
        FrameTransform_pb2,
        FrameTransforms_pb2,
        PackedElementField_pb2,
        PointCloud_pb2,
        Pose_pb2,
        PoseInFrame_pb2,
        PosesInFrame_pb2,
        Quaternion_pb2,
        RawImage_pb2,
        Vector3_pb2,
    )

    return {"CameraCalibration": CameraCalibration_pb2.CameraCalibration,
            "CompressedImage": CompressedImage_pb2.CompressedImage, "FrameTransform": FrameTransform_pb2.FrameTransform,
            "FrameTransforms": FrameTransforms_pb2.FrameTransforms, "PackedElementField":
            PackedElementField_pb2.PackedElementField, "PointCloud": PointCloud_pb2.PointCloud, "Pose": Pose_pb2.Pose,
            "PoseInFrame": PoseInFrame_pb2.PoseInFrame, "PosesInFrame": PosesInFrame_pb2.PosesInFrame,
            "Quaternion": Quaternion_pb2.Quaternion, "RawImage": RawImage_pb2.RawImage, "Vector3": Vector3_pb2.Vector3}


class McapWriter:
    """Sink streaming results into an MCAP file (`path`), finished at close."""

    name = "export_mcap"

    def __init__(self, path: str | Path, *, selection: PointSelection = DEFAULT_SELECTION,
                 jpeg_quality: int = 90) -> None:
        require_package("mcap_protobuf", extra="export", pip_name="mcap-protobuf-support")
        from mcap_protobuf.writer import Writer

        self.m = _fox()
        self.path = Path(path)
        self.selection = selection
        self.jpeg_quality = int(jpeg_quality)
        self.cameras = CameraLog()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb")
        self._writer = Writer(self._file)
        self._newest = 0
        self._closed = False
        self.messages = 0

    # ------------------------------------------------------------------------------------------ helpers

    def _stamp(self, msg: Any, t_ns: int) -> None:
        msg.timestamp.seconds, msg.timestamp.nanos = divmod(int(t_ns), 1_000_000_000)

    def _pose(self, T: np.ndarray) -> Any:
        q = rotmat_to_quat_xyzw(T[:3, :3])
        m = self.m
        return m["Pose"](position=m["Vector3"](x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                         orientation=m["Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))

    def _write(self, topic: str, msg: Any, log_time: int) -> None:
        self._writer.write_message(topic, msg, log_time=int(log_time), publish_time=int(log_time))
        self.messages += 1

    # ------------------------------------------------------------------------------------------ results

    def on_result(self, result: FrameResult) -> None:
        cam = self.cameras.add(result)
        if cam is None:
            return
        m, s = self.m, result.stream_id
        t_ns = int(result.t_ns)
        self._newest = max(self._newest, t_ns)
        log_time = self._newest if result.is_update else t_ns
        T = result.T_world_cam
        camera_frame = f"{s}/camera"

        tf = m["FrameTransform"](parent_frame_id="world", child_frame_id=camera_frame,
                                 translation=m["Vector3"](x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                                 rotation=self._pose(T).orientation)
        self._stamp(tf, t_ns)
        self._write("/tf", m["FrameTransforms"](transforms=[tf]), log_time)
        pose = m["PoseInFrame"](frame_id="world", pose=self._pose(T))
        self._stamp(pose, t_ns)
        self._write(f"/recon/{s}/pose", pose, log_time)
        if result.is_update:
            return  # the frame's images and points were written with its first emission

        K = result.K
        calib = m["CameraCalibration"](frame_id=camera_frame, width=cam.width, height=cam.height,
                                       distortion_model="plumb_bob", D=[0.0] * 5, K=K.reshape(-1).tolist(),
                                       R=np.eye(3).reshape(-1).tolist(),
                                       P=np.hstack([K, np.zeros((3, 1))]).reshape(-1).tolist())
        self._stamp(calib, t_ns)
        self._write(f"/recon/{s}/calibration", calib, log_time)
        if result.image is not None:
            import cv2

            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(result.image), cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if ok:
                img = m["CompressedImage"](frame_id=camera_frame, data=jpg.tobytes(), format="jpeg")
                self._stamp(img, t_ns)
                self._write(f"/recon/{s}/image", img, log_time)
        if result.depth is not None:
            d = np.ascontiguousarray(result.depth, dtype="<f4")
            raw = m["RawImage"](frame_id=camera_frame, width=d.shape[1], height=d.shape[0], encoding="32FC1",
                                step=d.shape[1] * 4, data=d.tobytes())
            self._stamp(raw, t_ns)
            self._write(f"/recon/{s}/depth", raw, log_time)
        xyz, rgb = select_points(result, self.selection)
        if len(xyz):
            self._write(f"/recon/{s}/points", self._cloud(xyz, rgb, t_ns), log_time)

    def _cloud(self, xyz: np.ndarray, rgb: np.ndarray | None, t_ns: int) -> Any:
        m = self.m
        packed = np.zeros(len(xyz), dtype=[("xyz", "<f4", 3), ("rgba", "u1", 4)])
        packed["xyz"] = xyz
        packed["rgba"][:, :3] = 128 if rgb is None else rgb
        packed["rgba"][:, 3] = 255
        F = m["PackedElementField"]
        fields = [F(name=n, offset=4 * i, type=F.NumericType.FLOAT32) for i, n in enumerate("xyz")]
        fields += [F(name=n, offset=12 + i, type=F.NumericType.UINT8) for i, n in enumerate(("red", "green", "blue",
                                                                                            "alpha"))]
        cloud = m["PointCloud"](frame_id="world", pose=self._pose(np.eye(4)), point_stride=packed.itemsize,
                                fields=fields, data=packed.tobytes())
        self._stamp(cloud, t_ns)
        return cloud

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            m = self.m
            for stream_id in self.cameras.stream_ids:
                frames = self.cameras.frames(stream_id)
                path = m["PosesInFrame"](frame_id="world", poses=[self._pose(c.T_world_cam) for c in frames])
                self._stamp(path, frames[-1].t_ns)
                self._write(f"/recon/{stream_id}/path", path, max(self._newest, frames[-1].t_ns))
            self._writer.finish()
        finally:
            self._file.close()
        logger.info("wrote %d MCAP messages (%d frames) to %s", self.messages, len(self.cameras), self.path)
