"""recon.nodes.ros: publish recon results to ROS (DESIGN.md §1 "ROS node").

- `core`: everything that does not need ROS (message decoding, stamps, pose / path / cloud fields, the
  per-node state machine), shared by both adapters and unit-tested without ROS;
- `ros1`: the rospy node behind `recon node ros`;
- `ros2`: the rclpy adapter, imported only where rclpy exists;
- `system`: how a venv Python finds the ROS 1 modules that Debian installs (see docs/ros.md);
- `cli`: the `recon node ros` arguments.

Importing this package imports neither rospy nor rclpy.
"""
