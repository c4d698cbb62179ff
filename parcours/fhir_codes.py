"""FHIR R4 required value sets that Parcours checks itself (fhir.resources does not enforce codes).

The gateway refuses a resource whose code is not in its set; the stream mapping relies on the
same sets. One definition, used by both.
"""

ENCOUNTER_CLASSES = frozenset(
    # v3 ActEncounterCode (http://terminology.hl7.org/CodeSystem/v3-ActCode).
    {"AMB", "EMER", "FLD", "HH", "IMP", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR"}
)
V2_PATIENT_CLASS = "http://terminology.hl7.org/CodeSystem/v2-0004"
# Encounter.class codes that feeds send from other code systems, and the ActEncounterCode each
# means: HL7 v2 patient classes (PV1-2, table 0004), and the words of older Synthea output.
V2_PATIENT_CLASSES = {"E": "EMER", "I": "IMP", "O": "AMB", "P": "PRENC", "R": "AMB", "B": "IMP"}
ENCOUNTER_CLASS_WORDS = {
    "inpatient": "IMP",
    "emergency": "EMER",
    "ambulatory": "AMB",
    "outpatient": "AMB",
    "wellness": "AMB",
    "urgentcare": "AMB",
    "home": "HH",
    "virtual": "VR",
}


def encounter_class(coding: object) -> str | None:
    """The v3 ActEncounterCode that an Encounter.class Coding means, whatever system it names
    (None when it means none that Parcours knows)."""
    if not isinstance(coding, dict):
        return None
    code = coding.get("code")
    if not isinstance(code, str):
        return None
    if coding.get("system") == V2_PATIENT_CLASS:
        return V2_PATIENT_CLASSES.get(code)
    if code in ENCOUNTER_CLASSES:
        return code
    return ENCOUNTER_CLASS_WORDS.get(code.lower())


ENCOUNTER_STATUSES = frozenset(
    {
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
ENCOUNTER_LOCATION_STATUSES = frozenset({"planned", "active", "reserved", "completed"})
APPOINTMENT_STATUSES = frozenset(
    {
        "proposed",
        "pending",
        "booked",
        "arrived",
        "fulfilled",
        "cancelled",
        "noshow",
        "entered-in-error",
        "checked-in",
        "waitlist",
    }
)
EPISODE_OF_CARE_STATUSES = frozenset(
    {"planned", "waitlist", "active", "onhold", "finished", "cancelled", "entered-in-error"}
)
SERVICE_REQUEST_STATUSES = frozenset(
    {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
)
SERVICE_REQUEST_INTENTS = frozenset(
    {
        "proposal",
        "plan",
        "directive",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    }
)
OBSERVATION_STATUSES = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
LOCATION_STATUSES = frozenset({"active", "suspended", "inactive"})
ADMINISTRATIVE_GENDERS = frozenset({"male", "female", "other", "unknown"})
