"""recon.align."""
