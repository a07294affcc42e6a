"""recon.viewer: Rerun logging, blueprint and sinks (.rrd file, live gRPC viewer, web viewer)."""
