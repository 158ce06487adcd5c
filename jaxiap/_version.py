"""The package version (one place; read by jaxiap.__version__, the CLI and run-folder metadata)."""

__version__ = "0.2.0.dev0"
