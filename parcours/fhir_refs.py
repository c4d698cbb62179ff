"""How Parcours reads a FHIR Reference: one definition for the gateway (patient keys, ownership)
and the stream mapping, so that what the gateway checks is what the worker folds. Also the one
rule on patient merges that both gateways (FHIR and HL7 v2) apply."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Longest chain of merges followed when looking for a loop.
MAX_MERGE_CHAIN = 32


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


def merge_loops(
    merged: str, into: str, replaced_by: Callable[[str], str | None], steps: int = MAX_MERGE_CHAIN
) -> bool:
    """Whether merging Patient `merged` into Patient `into` would make a loop: following the
    merges already made from `into` (`replaced_by` gives the Patient that replaced one, or None)
    comes back to `merged`. Each Patient of a loop is replaced by another: no pathway is left."""
    current: str | None = into
    for _ in range(steps):
        if current is None:
            return False
        if current == merged:
            return True
        current = replaced_by(current)
    return False
