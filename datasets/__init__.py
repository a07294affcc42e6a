"""recon.datasets: lazy sequence readers, the synthetic scene generator and the bundled sample.

    from recon.datasets import open_sequence
    seq = open_sequence("datasets/sample", on_error="skip")
    for frame in seq: ...                     # recon.types.Frame; ground truth in frame.meta["T_world_cam_gt"]
    seq.ground_truth, seq.stats.frames_skipped

Readers: `folder` (images, or a scene folder's images/), `video` (PyAV), `tum` (TUM RGB-D), `seven_scenes`
(7-Scenes), `kitti` (KITTI odometry), `scannet` (ScanNet's exported scenes), `nerfstudio` (transforms.json
folders), `bag` (ROS 1 bags, rosbag2 folders and MCAP files, decoded by the ROS codec `ros_msgs`); `synthetic`
renders scenes with ground truth in the TUM layout.
"""

from recon.datasets.base import OnError, ReadStats, Sequence
from recon.datasets.detect import detect_layout, open_sequence
from recon.types import Trajectory

__all__ = ["OnError", "ReadStats", "Sequence", "Trajectory", "detect_layout", "open_sequence"]
