"""How Parcours reads a FHIR Reference: one definition for the gateway (patient keys, ownership)
and the stream mapping, so that what the gateway checks is what the worker folds."""

from __future__ import annotations

from typing import Any


def reference_to(ref: Any, *types: str) -> str | None:
    """The id `ref` points to when it names one of `types`: `Type/id`, an absolute URL ending in
    `Type/id` (possibly followed by `_history/version`), or a bare `urn:uuid`."""
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        return None
    text: str = ref["reference"]
    if text.startswith("urn:uuid:"):
        return text.removeprefix("urn:uuid:")
    parts = text.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] in types and parts[-1]:
        return parts[-1]
    return None
