"""recon.io: plain file formats (TUM trajectories, colour images)."""
