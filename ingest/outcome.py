"""OperationOutcome: how the gateway tells an integrator what is wrong, and where.

Every issue names the failing element as a FHIRPath `expression` (e.g.
`Bundle.entry[3].resource.period.start`). Problems with the HTTP envelope rather than the
content (a header, the body size) are named `http.<Header>` in both `location` and `expression`,
as the FHIR spec does for `location`, so that every issue names *something*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from parcours import ParcoursError

# Issues an OperationOutcome lists, and rejection rows one request leaves in SQL.
MAX_ISSUES = 100
# CodeSystem of the gateway's rejection reasons (invalid-json, invalid-resource, …).
REASON_SYSTEM = "https://parcours.example/fhir/CodeSystem/ingest-reason"


# Code points FHIR strings may not hold (below 32, except tab, CR and LF).
FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# Longest diagnostics or expression text kept in an issue.
MAX_TEXT = 500


def escape_controls(text: str) -> str:
    """`text` with forbidden control characters written as `\\u0000`, safe for SQL and logs."""
    if not FORBIDDEN_CHARS.search(text):
        return text
    return FORBIDDEN_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def safe_text(text: str, limit: int = MAX_TEXT) -> str:
    """Text from a request made fit for an answer, a log line or an SQL row."""
    return clip(escape_controls(text), limit)


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue."""

    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()
    severity: str = "error"
    location: tuple[str, ...] = ()

    def to_fhir(self, reason: str | None = None) -> dict[str, Any]:
        """The issue as FHIR JSON; `reason` goes to `details` as a machine-readable code."""
        out: dict[str, Any] = {"severity": self.severity, "code": self.code}
        if reason:
            out["details"] = {"coding": [{"system": REASON_SYSTEM, "code": reason}], "text": reason}
        out["diagnostics"] = safe_text(self.diagnostics)
        if self.expression:
            out["expression"] = [safe_text(e) for e in self.expression]
        if self.location:
            out["location"] = [safe_text(e) for e in self.location]
        return out


def http_issue(header: str, code: str, diagnostics: str) -> Issue:
    """An issue about an HTTP header or the request envelope."""
    name = f"http.{header}"
    return Issue(code=code, diagnostics=diagnostics, expression=(name,), location=(name,))


def operation_outcome(
    issues: list[Issue] | tuple[Issue, ...], reason: str | None = None
) -> dict[str, Any]:
    """An OperationOutcome resource holding `issues`, each tagged with the gateway's `reason`:
    the first `MAX_ISSUES`, then one that counts the rest."""
    shown = list(issues[:MAX_ISSUES])
    if len(issues) > MAX_ISSUES:
        more = len(issues) - MAX_ISSUES
        shown.append(
            Issue(
                "too-costly",
                f"… and {more} more issue{'s' if more > 1 else ''} "
                f"(only the first {MAX_ISSUES} are listed)",
                severity="warning",
            )
        )
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir(reason) for i in shown]}


def outcome_reason(outcome: Any) -> str | None:
    """The gateway's reason code in an OperationOutcome it produced, if any."""
    try:
        for coding in outcome["issue"][0]["details"]["coding"]:
            if coding.get("system") == REASON_SYSTEM:
                return str(coding["code"])
    except (KeyError, IndexError, TypeError):
        pass
    return None


def information(text: str) -> dict[str, Any]:
    """A one-issue informational OperationOutcome (used for successful entries)."""
    return operation_outcome(
        [Issue(code="informational", diagnostics=text, severity="information")]
    )


class IngestError(ParcoursError):
    """Base exception of the ingest gateway."""


@dataclass
class Rejection(IngestError):
    """A request the gateway refuses, with its HTTP status and OperationOutcome issues.

    `reason` is a short stable code (`invalid-json`, `invalid-resource`, `unknown-type`, …)
    that counters and the feed-health page group by.
    """

    status: int
    reason: str
    issues: list[Issue] = field(default_factory=list)
    resource_type: str | None = None
    resource_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # False for refusals that are not about content (rate limit, slow body): counted, but
    # neither stored nor dead-lettered, so that a flood of them costs the gateway little.
    record: bool = True

    def __post_init__(self) -> None:
        super().__init__(self.summary)

    @property
    def summary(self) -> str:
        """One line: the reason and the first issue."""
        if not self.issues:
            return self.reason
        first = self.issues[0]
        where = f" at {first.expression[0]}" if first.expression else ""
        more = f" (+{len(self.issues) - 1} more)" if len(self.issues) > 1 else ""
        return safe_text(f"{self.reason}{where}: {first.diagnostics}{more}", 1000)

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome to send back."""
        return operation_outcome(self.issues, self.reason)


def busy_rejection(reason: str, diagnostics: str, retry_after_s: int) -> Rejection:
    """503 with Retry-After for a request that waited too long for a lock another request
    holds: nothing was published; counted, neither stored nor dead-lettered."""
    return Rejection(
        503,
        reason,
        [http_issue("Retry-After", "lock-error", diagnostics)],
        headers={"Retry-After": str(retry_after_s)},
        record=False,
    )


class BrokerUnavailable(IngestError):
    """Kafka did not acknowledge in time; the client should retry later (HTTP 503)."""


class DatabaseUnavailable(IngestError):
    """The gateway's database failed a moment ago; requests get 503 at once meanwhile."""


REASON_PHRASES = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    403: "Forbidden",
    408: "Request Timeout",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def status_line(status: int) -> str:
    """`201 Created`, as Bundle.entry.response.status wants it."""
    return f"{status} {REASON_PHRASES.get(status, '')}".strip()
