"""recon.calib: camera-info files (one reader for JSON, ROS camera_info YAML, OpenCV FileStorage, plain text) and
undistortion to a pinhole camera."""

from recon.calib.camera_info import (
    Calibration,
    find_camera_file,
    load_camera_file,
    load_camera_info,
    write_camera_info,
    write_camera_info_yaml,
)
from recon.calib.undistort import Undistorter, has_distortion

__all__ = ["Calibration", "Undistorter", "find_camera_file", "has_distortion", "load_camera_file",
           "load_camera_info", "write_camera_info", "write_camera_info_yaml"]
