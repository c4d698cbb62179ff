"""Faust stream processors: FHIR resources in, canonical pathway events, state and SQL rows out."""


class StreamsError(Exception):
    """Base exception of the stream processors."""
