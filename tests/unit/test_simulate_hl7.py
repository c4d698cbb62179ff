"""The simulator's HL7 side: Encounter versions of one hospital → PAM.fr ADT messages."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from ingest.hl7_map import apply_adt, encounter_resource, parse_adt
from simulate.hl7 import Converter, Hl7Sink

PARIS = ZoneInfo("Europe/Paris")


def version(
    n: int, status: str, moves: list[tuple[str, str]], end: str | None = None
) -> dict[str, Any]:
    enc: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": "stay-1",
        "meta": {"versionId": str(n)},
        "status": status,
        "class": {"code": "IMP"},
        "subject": {"reference": "Patient/pat-1"},
        "serviceProvider": {"reference": "Organization/ch-test"},
        "period": {"start": moves[0][1]},
        "location": [
            {
                "location": {"reference": f"Location/{loc}"},
                "status": "active",
                "period": {"start": at},
            }
            for loc, at in moves
        ],
    }
    if end:
        enc["period"]["end"] = end
        enc["hospitalization"] = {"dischargeDisposition": {"coding": [{"code": "home"}]}}
    return enc


def test_versions_become_admission_transfer_discharge_and_map_back_to_the_same_stay() -> None:
    conv = Converter("ch-test", PARIS)
    conv.remember_patient(
        {
            "resourceType": "Patient",
            "id": "pat-1",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1850475123456"}],
            "name": [{"family": "Roy", "given": ["Lou"]}],
            "gender": "female",
            "birthDate": "1985-04-12",
        }
    )
    a = [("ch-test-cardio-b001", "2026-01-05T10:00:00+01:00")]
    b = [*a, ("ch-test-med-int-b004", "2026-01-06T09:30:00+01:00")]
    v1, v2 = version(1, "in-progress", a), version(2, "in-progress", b)
    v3 = version(3, "finished", b, end="2026-01-08T11:00:00+01:00")
    messages = (
        conv.adt_for_version(v1)
        + conv.adt_for_version(v2)
        + conv.adt_for_version(v2)
        + conv.adt_for_version(v3)
    )
    parsed = [parse_adt(m, PARIS) for m in messages]
    assert [m.trigger for m in parsed] == ["A01", "A02", "A03"]
    assert parsed[0].patient.patient_id == "pat-1"
    assert [i.value for i in parsed[0].patient.identifiers] == ["pat-1", "1850475123456"]
    state = None
    for m in parsed:
        state = apply_adt(state, m)
    assert state is not None
    enc = encounter_resource(state)
    assert enc["status"] == "finished"
    beds = [
        e["location"]["reference"]
        for e in enc["location"]
        if e["physicalType"]["coding"][0]["code"] == "bd"
    ]
    assert beds == ["Location/ch-test-cardio-b001", "Location/ch-test-med-int-b004"]
    assert enc["period"] == {
        "start": "2026-01-05T10:00:00+01:00",
        "end": "2026-01-08T11:00:00+01:00",
    }
    assert enc["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"


def test_a_withdrawn_stay_is_cancelled_with_a11() -> None:
    conv = Converter("ch-test", PARIS)
    a = [("ch-test-cardio-b001", "2026-01-05T10:00:00+01:00")]
    first = conv.adt_for_version(version(1, "in-progress", a))
    cancel = conv.adt_for_version(version(2, "entered-in-error", a))
    msg = parse_adt(cancel[0], PARIS)
    assert msg.trigger == "A11" and msg.movement is not None and msg.movement.action == "CANCEL"
    state = apply_adt(apply_adt(None, parse_adt(first[0], PARIS)), msg)
    assert encounter_resource(state)["status"] == "cancelled"


def test_other_establishments_and_classes_are_not_converted() -> None:
    conv = Converter("ch-test", PARIS)
    other = version(1, "in-progress", [("x-cardio-b001", "2026-01-05T10:00:00+01:00")])
    other["serviceProvider"] = {"reference": "Organization/clinique-test"}
    amb = version(1, "finished", [("ch-test-cardio-b001", "2026-01-05T10:00:00+01:00")])
    amb["class"] = {"code": "AMB"}
    assert not conv.wants(other) and not conv.wants(amb)


class ListSink:
    """Keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, resource: dict[str, Any], valid: bool) -> None:
        self.sent.append(resource)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def summary(self) -> dict[str, int]:
        return {"sent": len(self.sent)}


class ListSender:
    """Stands for the MLLP connection: keeps the payloads."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def send(self, payload: bytes) -> None:
        self.payloads.append(payload)


def test_stays_the_history_began_go_on_as_fhir_and_new_ones_as_adt_with_its_patients() -> None:
    live, past = ListSink(), ListSink()
    sink = Hl7Sink(live, "ch-test", "127.0.0.1", 1, "Europe/Paris")
    sender = ListSender()
    sink.sender = sender  # type: ignore[assignment]
    history = sink.observe(past)
    patient = {
        "resourceType": "Patient",
        "id": "pat-1",
        "name": [{"family": "Roy", "given": ["Lou"]}],
        "gender": "female",
    }
    a = [("ch-test-cardio-b001", "2026-01-05T10:00:00+01:00")]
    b = [*a, ("ch-test-med-int-b004", "2026-01-06T09:30:00+01:00")]
    history.send(patient, True)
    history.send(version(1, "in-progress", a), True)
    # The history itself is passed on unchanged, as FHIR.
    assert [r["resourceType"] for r in past.sent] == ["Patient", "Encounter"]

    # Live: the stay the history began goes on as FHIR (its versions keep one numbering)…
    moved = version(2, "in-progress", b)
    sink.send(moved, True)
    assert live.sent == [moved] and sender.payloads == []
    # …and a stay begun live goes as ADT, its patient named as the history gave it.
    new = version(1, "in-progress", b)
    new["id"] = "stay-2"
    sink.send(new, True)
    assert live.sent == [moved]
    parsed = [parse_adt(p, PARIS) for p in sender.payloads]
    assert [m.trigger for m in parsed] == ["A01", "A02"]
    assert {m.visit.encounter_id for m in parsed if m.visit} == {"stay-2"}
    assert (parsed[0].patient.family, parsed[0].patient.given) == ("Roy", "Lou")


class BatchingSink(ListSink):
    """Holds what it is sent until flushed, like the gateway's batches; notes when it posts."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self.held: list[dict[str, Any]] = []

    def send(self, resource: dict[str, Any], valid: bool) -> None:
        self.held.append(resource)

    def flush(self) -> None:
        self.sent += self.held
        self.log += [f"fhir {r['resourceType']}/{r['id']}" for r in self.held]
        self.held = []


class LoggingSender:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def send(self, payload: bytes) -> None:
        self.log.append(f"adt {parse_adt(payload, PARIS).trigger}")


def test_a_patient_new_live_reaches_the_gateway_before_its_first_adt() -> None:
    """The listener records the patient of an ADT as the integrator's version 1: a FHIR Patient
    still in the gateway sink's batch would then arrive second and be refused as a conflict."""
    log: list[str] = []
    live = BatchingSink(log)
    sink = Hl7Sink(live, "ch-test", "127.0.0.1", 1, "Europe/Paris")
    sink.sender = LoggingSender(log)  # type: ignore[assignment]
    sink.send({"resourceType": "Patient", "id": "pat-1", "gender": "male"}, True)
    sink.send(
        version(1, "in-progress", [("ch-test-cardio-b001", "2026-01-05T10:00:00+01:00")]), True
    )
    assert log == ["fhir Patient/pat-1", "adt A01"]
    # Later movements of a patient already sent do not flush the batch again.
    sink.send({"resourceType": "Patient", "id": "pat-2", "gender": "male"}, True)
    moved = version(
        2,
        "in-progress",
        [
            ("ch-test-cardio-b001", "2026-01-05T10:00:00+01:00"),
            ("ch-test-med-int-b004", "2026-01-06T09:30:00+01:00"),
        ],
    )
    sink.send(moved, True)
    assert log == ["fhir Patient/pat-1", "adt A01", "adt A02"]
