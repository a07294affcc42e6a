"""recon: distributed streaming 3D reconstruction.

Importing `recon` is cheap: it pulls in no rerun, zmq, rclpy, triton or xformers, and never touches CUDA.
See DESIGN.md in the shared folder for the data flow and conventions (OpenCV camera axes, `T_world_cam`
camera-to-world poses, integer nanosecond time).
"""

from recon.types import BackendStats, CameraInfo, Frame, FrameResult

__all__ = ["BackendStats", "CameraInfo", "Frame", "FrameResult", "__version__"]
__version__ = "0.1.0"
