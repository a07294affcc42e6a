"""Stand-in package for the gpu-check reference adapters (tests only)."""
