"""Pure: the edge checks every JSON value passes before anything else looks at it.

FHIR strings may not hold Unicode code points below 32 other than tab, carriage return and line
feed (R4 §2.1.0.4: `[ \\r\\n\\t\\S]+`). A NUL that slips through is refused by PostgreSQL's text
types far downstream, so it is refused here, naming the element. JSON nested deeper than
`MAX_DEPTH` is refused before any recursive code (the R4B models, reference rewriting) sees it.
Both walks are iterative: depth alone cannot make them fail. An object that gives one name
twice is refused too (FHIR JSON: names SHALL NOT repeat): a parser keeps one of the values and
drops the other without a word.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ingest.outcome import FORBIDDEN_CHARS, MAX_ISSUES, Issue, escape_controls

# JSON levels (objects and arrays). A Bundle spends three (Bundle → entry[] → resource), and an
# R4 resource rarely needs more than twenty; the R4B models overflow Python's stack near 250.
MAX_DEPTH = 64
# Values (object members and array items, at any depth) in one resource. The largest real
# resources hold a few thousand; validating a million-item array takes the R4B models a minute
# and hundreds of MB, which no single request may cost.
MAX_ELEMENTS = 100_000
# Every forbidden character is written as an escape in JSON text (raw control characters are
# not valid JSON): a body without any of these escapes holds no forbidden character, which
# spares the walk over its strings. `\b` and `\f` are JSON's short forms of U+0008 and U+000C.
_ESCAPED = re.compile(rb"\\u00[01][0-9a-fA-F]|\\[bf]")


def may_hold_controls(raw: bytes) -> bool:
    """False when the JSON text `raw` certainly holds no forbidden character."""
    return _ESCAPED.search(raw) is not None


def measure(value: Any, limit: int = MAX_DEPTH) -> tuple[bool, int]:
    """(nested more than `limit` levels, how many values it holds), in one breadth-first walk
    that stops at the first level too deep."""
    level = [value] if isinstance(value, dict | list) else []
    count = 0
    for _ in range(limit):
        below: list[Any] = []
        for node in level:
            children = node.values() if isinstance(node, dict) else node
            count += len(children)
            below.extend(c for c in children if isinstance(c, dict | list))
        if not below:
            return False, count
        level = below
    return True, count


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when `value` nests objects and arrays more than `limit` levels."""
    return measure(value, limit)[0]


def elements_issue(root: str, count: int, limit: int = MAX_ELEMENTS) -> Issue:
    """The issue of a resource holding too many values."""
    return Issue(
        "too-costly",
        f"The resource holds {count} JSON values; the gateway validates resources of at most "
        f"{limit}",
        (root,),
    )


def depth_issue(root: str, limit: int = MAX_DEPTH) -> Issue:
    """The issue of a body nested too deep."""
    return Issue(
        "too-costly",
        f"JSON nested more than {limit} levels deep; the gateway refuses deeper structures",
        (root,),
    )


class _Repeats(dict[str, Any]):
    """A JSON object that gives the name `repeated` more than once."""

    repeated = ""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    out = _Repeats(pairs)
    seen: set[str] = set()
    for key, _value in pairs:
        if key in seen:
            out.repeated = key
            break
        seen.add(key)
    return out


def repeated_name_issue(raw: bytes | str, root: str) -> Issue | None:
    """The issue of the first object of this JSON text (valid, as a faster parser found it)
    that gives a name twice, naming its element (`Patient.name[0].family`,
    `Bundle.entry[2].resource.status`); None when no name repeats."""
    repeats: list[_Repeats] = []

    def read(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = _object(pairs)
        if isinstance(obj, _Repeats):
            repeats.append(obj)
        return obj

    try:
        doc = json.loads(raw, object_pairs_hook=read)
    except (ValueError, RecursionError):
        return None  # left to the checks of depth and syntax
    if not repeats:
        return None
    stack: list[tuple[Any, str]] = [(doc, root)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _Repeats):
            where = _child(path, node.repeated)
            return Issue(
                "structure",
                f"Le nom {escape_controls(repr(node.repeated))[:80]} est donné deux fois dans "
                "le même objet JSON : FHIR l'interdit, et l'une des deux valeurs serait perdue. "
                "/ The name is given twice in one JSON object: FHIR forbids it, and one of "
                "the values would be lost.",
                (where,),
            )
        if isinstance(node, dict):
            stack.extend((v, _child(path, k)) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node))))
    return None


def _child(path: str, key: str) -> str:
    if key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{escape_controls(repr(key))[:80]}]"


def text_issues(value: Any, root: str, limit: int = MAX_ISSUES) -> list[Issue]:
    """One issue per string (or object key) holding a character FHIR forbids, naming its
    element (`Location.name`, `Encounter.identifier[0].value`): the first `limit`, then one
    that counts the rest."""
    issues: list[Issue] = []
    more = 0
    stack: list[tuple[Any, str]] = [(value, root)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            found = FORBIDDEN_CHARS.search(node)
            if found and len(issues) >= limit:
                more += 1
            elif found:
                issues.append(
                    Issue(
                        "invalid",
                        f"The string holds the control character U+{ord(found.group()):04X}, "
                        "which FHIR forbids (only tab, CR and LF are allowed)",
                        (path,),
                    )
                )
        elif isinstance(node, dict):
            for key, child in reversed(list(node.items())):
                if not FORBIDDEN_CHARS.search(key):
                    stack.append((child, _child(path, key)))
                elif len(issues) >= limit:
                    more += 1
                else:
                    issues.append(
                        Issue(
                            "structure",
                            "An element name holds a control character",
                            (_child(path, key),),
                        )
                    )
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(node))))
    if more:
        issues.append(more_issue(more, limit))
    return issues


def more_issue(more: int, shown: int) -> Issue:
    """The issue that stands for the `more` issues left out after the first `shown`."""
    return Issue(
        "too-costly",
        f"… and {more} more issue{'s' if more > 1 else ''} (only the first {shown} are listed)",
        severity="warning",
    )


def cap_issues(issues: list[Issue], limit: int = MAX_ISSUES) -> list[Issue]:
    """The first `limit` issues, then one that says how many more there were."""
    if len(issues) <= limit:
        return issues
    return [*issues[:limit], more_issue(len(issues) - limit, limit)]


def clean_json(value: Any) -> Any:
    """A copy of a JSON value whose strings hold no forbidden character (for SQL JSON)."""
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, dict):
        return {escape_controls(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value
