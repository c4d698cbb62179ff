"""OperationOutcome: how the gateway tells an integrator what is wrong, and where.

Every issue names the failing element as a FHIRPath `expression` (e.g.
`Bundle.entry[3].resource.period.start`). Problems with the HTTP envelope rather than the
content (a header, the body size) are named `http.<Header>` in both `location` and `expression`,
as the FHIR spec does for `location`, so that every issue names *something*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parcours import ParcoursError

# CodeSystem of the gateway's rejection reasons (invalid-json, invalid-resource, …).
REASON_SYSTEM = "https://parcours.example/fhir/CodeSystem/ingest-reason"


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
        out["diagnostics"] = self.diagnostics
        if self.expression:
            out["expression"] = list(self.expression)
        if self.location:
            out["location"] = list(self.location)
        return out


def http_issue(header: str, code: str, diagnostics: str) -> Issue:
    """An issue about an HTTP header or the request envelope."""
    name = f"http.{header}"
    return Issue(code=code, diagnostics=diagnostics, expression=(name,), location=(name,))


def operation_outcome(
    issues: list[Issue] | tuple[Issue, ...], reason: str | None = None
) -> dict[str, Any]:
    """An OperationOutcome resource holding `issues`, each tagged with the gateway's `reason`."""
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir(reason) for i in issues]}


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
        return f"{self.reason}{where}: {first.diagnostics}{more}"

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome to send back."""
        return operation_outcome(self.issues, self.reason)


class BrokerUnavailable(IngestError):
    """Kafka did not acknowledge in time; the client should retry later (HTTP 503)."""


REASON_PHRASES = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    503: "Service Unavailable",
}


def status_line(status: int) -> str:
    """`201 Created`, as Bundle.entry.response.status wants it."""
    return f"{status} {REASON_PHRASES.get(status, '')}".strip()
