"""recon.models.layers."""
