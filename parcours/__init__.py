"""Parcours shared kernel: settings, topic names, SQL schema, the embedded broker and the CLI."""

__version__ = "0.1.0"


class ParcoursError(Exception):
    """Base exception of the shared kernel."""
