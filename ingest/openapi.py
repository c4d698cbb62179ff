"""JSON Schemas of the gateway's request bodies, for /openapi.json.

They describe the FHIR R4 resources Parcours maps (Patient, Encounter, Location…) closely enough
for a client generator, or a property-based tester such as schemathesis, to build bodies that
pass the structural checks and reach the deeper ones (codes, invariants, ownership). They are
documentation: the gateway validates with the R4B models, not with these schemas.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

from fastapi import Path

from ingest.validate import MAPPED_TYPES, resource_types
from parcours import fhir_codes as codes

ID = {"type": "string", "pattern": "^[A-Za-z0-9\\-.]{1,64}$"}
DATETIME = {
    "type": "string",
    "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])(T([01][0-9]|2[0-3]):[0-5][0-9]"
    ":[0-5][0-9](Z|\\+0[0-2]:00))?$",
}
STRING = {"type": "string", "minLength": 1, "maxLength": 200}
CODING = {
    "type": "object",
    "properties": {"system": STRING, "code": STRING, "display": STRING},
    "additionalProperties": False,
}
CODEABLE = {
    "type": "object",
    "properties": {"coding": {"type": "array", "items": CODING, "maxItems": 3}, "text": STRING},
    "additionalProperties": False,
}
PERIOD = {
    "type": "object",
    "properties": {"start": DATETIME, "end": DATETIME},
    "additionalProperties": False,
}
REFERENCE = {
    "type": "object",
    "properties": {
        "reference": {
            "type": "string",
            "pattern": "^(Patient|Location|Organization|Practitioner|Encounter)/"
            "[A-Za-z0-9\\-.]{1,64}$",
        },
        "display": STRING,
    },
    "additionalProperties": False,
}
IDENTIFIER = {
    "type": "object",
    "properties": {"system": STRING, "value": STRING},
    "additionalProperties": False,
}
META = {
    "type": "object",
    "properties": {"versionId": ID, "lastUpdated": DATETIME},
    "additionalProperties": False,
}


def _common(type_name: str) -> dict[str, Any]:
    return {
        "resourceType": {"type": "string", "enum": [type_name]},
        "id": ID,
        "meta": META,
        "identifier": {"type": "array", "items": IDENTIFIER, "maxItems": 3},
    }


def _resource(type_name: str, required: list[str], **props: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**_common(type_name), **props},
        "required": ["resourceType", *required],
        "additionalProperties": False,
    }


def _enum(values: frozenset[str]) -> dict[str, Any]:
    return {"type": "string", "enum": sorted(values)}


@cache
def resource_schemas() -> dict[str, dict[str, Any]]:
    """A schema per mapped resource type."""
    return {
        "Patient": _resource(
            "Patient",
            [],
            gender=_enum(codes.ADMINISTRATIVE_GENDERS),
            birthDate={
                "type": "string",
                "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])$",
            },
            name={
                "type": "array",
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {
                        "family": STRING,
                        "given": {"type": "array", "items": STRING, "maxItems": 2},
                    },
                    "additionalProperties": False,
                },
            },
            deceasedBoolean={"type": "boolean"},
        ),
        "Encounter": _resource(
            "Encounter",
            ["status", "class"],
            status=_enum(codes.ENCOUNTER_STATUSES),
            **{
                "class": {
                    "type": "object",
                    "properties": {
                        "system": {
                            "type": "string",
                            "enum": ["http://terminology.hl7.org/CodeSystem/v3-ActCode"],
                        },
                        "code": _enum(codes.ENCOUNTER_CLASSES),
                    },
                    "required": ["system", "code"],
                    "additionalProperties": False,
                }
            },
            subject=REFERENCE,
            period=PERIOD,
            location={
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "location": REFERENCE,
                        "status": {
                            "type": "string",
                            "enum": ["planned", "active", "reserved", "completed"],
                        },
                        "period": PERIOD,
                    },
                    "required": ["location"],
                    "additionalProperties": False,
                },
            },
        ),
        "Location": _resource(
            "Location",
            [],
            name=STRING,
            status=_enum(codes.LOCATION_STATUSES),
            physicalType=CODEABLE,
            partOf=REFERENCE,
        ),
        "Organization": _resource("Organization", [], name=STRING, active={"type": "boolean"}),
        "Practitioner": _resource("Practitioner", [], active={"type": "boolean"}),
        "ServiceRequest": _resource(
            "ServiceRequest",
            ["status", "intent", "subject"],
            status=_enum(codes.SERVICE_REQUEST_STATUSES),
            intent=_enum(codes.SERVICE_REQUEST_INTENTS),
            subject=REFERENCE,
            authoredOn=DATETIME,
            requester=REFERENCE,
        ),
        "EpisodeOfCare": _resource(
            "EpisodeOfCare",
            ["status", "patient"],
            status=_enum(codes.EPISODE_OF_CARE_STATUSES),
            patient=REFERENCE,
            period=PERIOD,
        ),
        "Observation": _resource(
            "Observation",
            ["status", "code"],
            status=_enum(codes.OBSERVATION_STATUSES),
            code=CODEABLE,
            subject=REFERENCE,
            effectiveDateTime=DATETIME,
        ),
    }


def _any_resource() -> dict[str, Any]:
    return {"oneOf": list(resource_schemas().values())}


@cache
def body_schemas() -> dict[str, dict[str, Any]]:
    """Request body schemas: `resource` (any mapped type), `bundle`, `ndjson`."""
    entry = {
        "type": "object",
        "properties": {
            "fullUrl": {"type": "string", "pattern": "^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-"},
            "resource": _any_resource(),
            "request": {
                "type": "object",
                "properties": {
                    "method": {"type": "string", "enum": ["POST", "PUT"]},
                    "url": {"type": "string", "enum": sorted(MAPPED_TYPES)},
                },
                "required": ["method", "url"],
                "additionalProperties": False,
            },
        },
        "required": ["resource"],
        "additionalProperties": False,
    }
    return {
        "resource": _any_resource(),
        "bundle": {
            "type": "object",
            "properties": {
                "resourceType": {"type": "string", "enum": ["Bundle"]},
                "type": {"type": "string", "enum": ["transaction", "batch", "collection"]},
                "entry": {"type": "array", "items": entry, "maxItems": 5},
            },
            "required": ["resourceType", "type"],
            "additionalProperties": False,
        },
        "ndjson": {
            "type": "array",
            "items": _any_resource(),
            "maxItems": 5,
            "description": "The resources, sent as NDJSON: one compact JSON resource per line",
        },
    }


type_name_schema = Annotated[
    str,
    Path(
        description="An R4 resource type",
        json_schema_extra={"enum": sorted(resource_types())},
    ),
]
