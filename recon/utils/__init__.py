"""Small shared helpers: optional imports, logging set-up."""
