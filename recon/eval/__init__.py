"""recon.eval."""
