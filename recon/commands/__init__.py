"""CLI subcommands (one module each). This layer may use `recon.nodes` and `recon.viewer`; core may not."""
