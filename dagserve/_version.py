"""The package version: one copy, importable from every layer (the OpenAPI description reads it)."""

__version__ = "0.1.0"
