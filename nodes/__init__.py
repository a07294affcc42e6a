"""recon.nodes: the wire protocol and the camera / reconstruction / viewer / ROS nodes (DESIGN.md §1, §6)."""
