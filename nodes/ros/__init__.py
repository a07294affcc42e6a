"""recon.nodes.ros: publish recon results to ROS (DESIGN.md §1 "ROS node").

- `core`: the message half that does not need ROS (stamps, pose / path / cloud fields, ~path, the
  configuration), shared by both adapters and unit-tested without ROS;
- `frontend`: the ROS node as a front end of the node pipeline (callbacks -> push source -> camera node ->
  reconstruction node, in-process or external -> results -> Outputs the adapters publish);
- `ros1`: the rospy node behind `recon node ros`;
- `ros2`: the rclpy adapter, imported only where rclpy exists;
- `system`: how a venv Python finds the ROS 1 modules that Debian installs (see docs/ros.md);
- `cli`: the `recon node ros` arguments.

Importing this package imports neither rospy nor rclpy.
"""
