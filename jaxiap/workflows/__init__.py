"""End-to-end studies used by the CLI and the notebooks."""
