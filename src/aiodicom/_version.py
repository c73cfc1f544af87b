"""The package version (kept apart so sans-IO modules can import it)."""

__version__ = "0.1.0.dev0"
