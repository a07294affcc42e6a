"""recon.datasets: lazy sequence readers, the synthetic scene generator and the bundled sample."""
