"""recon.models."""
