"""recon.memory."""
