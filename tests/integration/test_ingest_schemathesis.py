"""schemathesis against the gateway's /openapi.json: a fixed number of generated requests per
operation, with a valid token, and no answer may be a 5xx. The request schemas describe FHIR
bodies (ingest/openapi.py), so generated requests get past JSON parsing into validation,
invariants, dedupe and publishing."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from ingest.auth import create_token
from parcours.db import make_engine
from tests.integration.ingest_helpers import Gateway, gateway_env, run_gateway

pytestmark = pytest.mark.integration

EXAMPLES = 40  # per operation
STATUSES: Counter[int | str] = Counter()


@schemathesis.serializer("application/fhir+ndjson", "application/ndjson", "application/x-ndjson")
def ndjson(_ctx: object, value: object) -> bytes:
    """The gateway's schema gives NDJSON bodies as an array of resources: one per line."""
    lines = value if isinstance(value, list) else [value]
    return b"\n".join(json.dumps(line).encode() for line in lines)


@dataclass
class Api:
    gw: Gateway
    token: str


@pytest.fixture(scope="module")
def api(broker: str, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    engine = make_engine(pg_url)
    token = create_token(engine, f"schemathesis-{uuid.uuid4().hex[:6]}")
    engine.dispose()
    env = gateway_env(
        broker,
        pg_url,
        f"s{uuid.uuid4().hex[:8]}.",
        PARCOURS_INGEST_RATE_PER_S="0",
        PARCOURS_INGEST_OWNERSHIP="false",
    )
    log = tmp_path_factory.mktemp("schemathesis") / "gateway.log"
    with run_gateway(env, log) as gw:
        yield Api(gw, token)


def check(case: schemathesis.Case, api: Api) -> None:
    response = case.call(
        base_url=api.gw.url, headers={"Authorization": f"Bearer {api.token}"}, timeout=60
    )
    STATUSES[response.status_code] += 1
    if response.status_code == 200 and case.method == "POST":
        for entry in response.json().get("entry", []):
            STATUSES[f"entry {entry['response']['status'][:3]}"] += 1
    assert response.status_code < 500, (case.method, case.path, response.text[:1000])
    if response.status_code >= 400 and case.path.startswith("/fhir"):
        assert response.json()["resourceType"] == "OperationOutcome", response.text[:500]


def test_no_generated_request_gets_a_5xx(api: Api) -> None:
    schema = schemathesis.openapi.from_url(f"{api.gw.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /fhir",
        "POST /fhir/{type_name}",
        "PUT /fhir/{type_name}/{resource_id}",
        "POST /fhir/$import",
    }
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            check(case, api)

        run()


def test_generated_requests_went_deep(api: Api) -> None:
    """Some generated bodies were accepted (2xx from a write), so the schemas reach the
    publishing path, not only the parsers."""
    assert STATUSES[201] + STATUSES["entry 201"] > 0, STATUSES
    assert httpx.get(f"{api.gw.url}/healthz", timeout=30).status_code == 200
