"""Simulated facts → FHIR R4 JSON resources, exactly as docs/FHIR_PROFILE.md describes. Pure.

Times are written in the territory's local time with their UTC offset, as French feeds do.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ingest.bundle import patient_key
from simulate.model import (
    AppointmentRec,
    Directory,
    Emission,
    HomeCareRec,
    PatientRec,
    ReferralRec,
    StayRec,
    VisitRec,
)
from simulate.territory import Territory

OID_INS = "urn:oid:1.2.250.1.213.1.4.8"
OID_FINESS = "urn:oid:1.2.250.1.71.4.2.2"
OID_RPPS = "urn:oid:1.2.250.1.71.4.2.1"
SERVICE_SYSTEM = "https://parcours.example/fhir/CodeSystem/service"
HOME_CARE_SYSTEM = "https://parcours.example/fhir/CodeSystem/episode-type"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOCATION_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
ADMIT_SOURCE = "http://terminology.hl7.org/CodeSystem/admit-source"
DISCHARGE_DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
SNOMED = "http://snomed.info/sct"

CLASS_DISPLAY = {
    "AMB": "ambulatory",
    "EMER": "emergency",
    "IMP": "inpatient encounter",
    "HH": "home health",
}
PHYSICAL_DISPLAY = {"si": "Site", "wa": "Ward", "bd": "Bed"}
# Simulator dispositions → R4 discharge-disposition codes (home care is a discharge home, with an
# EpisodeOfCare alongside).
DISPOSITION_CODE = {
    "home": ("home", "Home"),
    "home_care": ("home", "Home"),
    "rehab": ("rehab", "Rehabilitation"),
    "other": ("other-hcf", "Other healthcare facility"),
    "other-hcf": ("other-hcf", "Other healthcare facility"),
    "exp": ("exp", "Expired"),
    "aadvice": ("aadvice", "Left against advice"),
}
DISPOSITION_TEXT = {
    "home": "Retour à domicile",
    "home_care": "Retour à domicile avec soins infirmiers",
    "rehab": "Soins de suite et de réadaptation",
    "other": "Transfert vers un autre établissement",
    "other-hcf": "Transfert vers un autre établissement",
    "exp": "Décès",
    "aadvice": "Parti sans attendre",
}
ADMIT_DISPLAY = {"emd": "From accident/emergency department", "gp": "General Practitioner referral"}


class FhirWriter:
    """Turns the simulator's facts into FHIR R4 resources for one territory."""

    def __init__(self, territory: Territory, directory: Directory) -> None:
        self.territory = territory
        self.directory = directory
        self.tz = ZoneInfo(territory.timezone)

    def ts(self, at: datetime) -> str:
        """An instant with its UTC offset, in local time, to the second."""
        return at.astimezone(self.tz).isoformat(timespec="seconds")

    def _meta(self, version: int, at: datetime) -> dict[str, Any]:
        return {"versionId": str(version), "lastUpdated": self.ts(at)}

    # -- places and people ---------------------------------------------------------------------

    def directory_resources(self, at: datetime) -> list[dict[str, Any]]:
        """Organizations, Locations (site → ward → bed) and Practitioners, version 1 at `at`."""
        out: list[dict[str, Any]] = []
        meta = self._meta(1, at)
        for est in self.territory.establishments:
            out.append(
                {
                    "resourceType": "Organization",
                    "id": est.id,
                    "meta": meta,
                    "identifier": [{"system": OID_FINESS, "value": est.finess}],
                    "active": True,
                    "type": [{"coding": [{"system": ORG_TYPE, "code": "prov"}], "text": est.kind}],
                    "name": est.name,
                    "address": [{"city": est.city, "country": "FR"}],
                }
            )
        for nursing in self.directory.nursing:
            out.append(
                {
                    "resourceType": "Organization",
                    "id": nursing.id,
                    "meta": meta,
                    "identifier": [{"system": OID_FINESS, "value": nursing.finess}],
                    "active": True,
                    "type": [{"coding": [{"system": ORG_TYPE, "code": "prov"}], "text": "ssiad"}],
                    "name": nursing.name,
                }
            )
        for est in self.territory.establishments:
            site = f"{est.id}-site"
            out.append(self._location(site, est.name, "si", est.id, None, None, meta))
            for ward in est.wards:
                svc = self.territory.services[ward.service]
                out.append(
                    self._location(
                        ward.id, ward.name, "wa", est.id, site, (svc.code, svc.display), meta
                    )
                )
                for n, bed in enumerate(ward.bed_ids(), start=1):
                    out.append(
                        self._location(
                            bed, f"{ward.name} lit {n}", "bd", est.id, ward.id, None, meta
                        )
                    )
        for gp in self.directory.gps:
            out.append(
                {
                    "resourceType": "Practitioner",
                    "id": gp.id,
                    "meta": meta,
                    "identifier": [{"system": OID_RPPS, "value": gp.rpps}],
                    "active": True,
                    "name": [{"family": gp.family, "given": [gp.given], "prefix": ["Dr"]}],
                    "gender": gp.gender,
                    "qualification": [{"code": {"text": "Médecin généraliste"}}],
                }
            )
        return out

    def _location(
        self,
        loc_id: str,
        name: str,
        physical: str,
        est_id: str,
        part_of: str | None,
        service: tuple[str, str] | None,
        meta: dict[str, Any],
    ) -> dict[str, Any]:
        res: dict[str, Any] = {
            "resourceType": "Location",
            "id": loc_id,
            "meta": meta,
            "status": "active",
            "name": name,
            "mode": "instance",
            "physicalType": {
                "coding": [
                    {
                        "system": LOCATION_TYPE,
                        "code": physical,
                        "display": PHYSICAL_DISPLAY[physical],
                    }
                ]
            },
            "managingOrganization": {"reference": f"Organization/{est_id}"},
        }
        if service is not None:
            res["type"] = [
                {"coding": [{"system": SERVICE_SYSTEM, "code": service[0], "display": service[1]}]}
            ]
        if part_of is not None:
            res["partOf"] = {"reference": f"Location/{part_of}"}
        return res

    # -- facts ---------------------------------------------------------------------------------

    def resource(self, emission: Emission) -> dict[str, Any]:
        """The FHIR resource of one emission (one version of one fact)."""
        rec = emission.record
        meta = self._meta(emission.version, emission.at)
        if isinstance(rec, PatientRec):
            return self.patient(rec, meta)
        if isinstance(rec, StayRec):
            return self.stay(rec, meta)
        if isinstance(rec, VisitRec):
            return self.visit(rec, meta)
        if isinstance(rec, ReferralRec):
            return self.referral(rec, meta)
        if isinstance(rec, AppointmentRec):
            return self.appointment(rec, meta)
        if isinstance(rec, HomeCareRec):
            return self.home_care(rec, meta)
        raise TypeError(type(rec))

    def patient(self, rec: PatientRec, meta: dict[str, Any]) -> dict[str, Any]:
        """Patient with an INS identifier."""
        res: dict[str, Any] = {
            "resourceType": "Patient",
            "id": rec.id,
            "meta": meta,
            "identifier": [{"system": OID_INS, "value": rec.ins}],
            "name": [{"use": "official", "family": rec.family, "given": [rec.given]}],
            "gender": rec.gender,
            "birthDate": rec.birth_date.isoformat(),
            "address": [
                {
                    "city": self.territory.community.city,
                    "district": self.territory.community.department,
                    "country": "FR",
                }
            ],
        }
        if rec.gp:
            res["generalPractitioner"] = [{"reference": f"Practitioner/{rec.gp}"}]
        if rec.deceased_at is not None:
            res["deceasedDateTime"] = self.ts(rec.deceased_at)
        return res

    def stay(self, rec: StayRec, meta: dict[str, Any]) -> dict[str, Any]:
        """An ED visit (EMER) or an inpatient stay (IMP), with its ward and bed moves."""
        period: dict[str, str] = {"start": self.ts(rec.start)}
        if rec.end is not None:
            period["end"] = self.ts(rec.end)
        locations = []
        for move in rec.moves:
            entry_period = {"start": self.ts(move.start)}
            if move.end is not None:
                entry_period["end"] = self.ts(move.end)
            locations.append(
                {
                    "location": {"reference": f"Location/{move.bed or move.ward}"},
                    "status": "completed" if move.end is not None else "active",
                    "period": entry_period,
                }
            )
        res: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": rec.id,
            "meta": meta,
            "status": rec.status,
            "class": {"system": ACT_CODE, "code": rec.cls, "display": CLASS_DISPLAY[rec.cls]},
            "subject": {"reference": f"Patient/{rec.patient}"},
            "period": period,
            "serviceProvider": {"reference": f"Organization/{rec.establishment}"},
            "location": locations,
        }
        if rec.based_on:
            res["basedOn"] = [{"reference": f"ServiceRequest/{rec.based_on}"}]
        if rec.part_of:
            res["partOf"] = {"reference": f"Encounter/{rec.part_of}"}
        hosp: dict[str, Any] = {}
        if rec.admit_source:
            hosp["admitSource"] = {
                "coding": [
                    {
                        "system": ADMIT_SOURCE,
                        "code": rec.admit_source,
                        "display": ADMIT_DISPLAY.get(rec.admit_source, rec.admit_source),
                    }
                ]
            }
        if rec.disposition and rec.status == "finished":
            code, display = DISPOSITION_CODE[rec.disposition]
            hosp["dischargeDisposition"] = {
                "coding": [{"system": DISCHARGE_DISPOSITION, "code": code, "display": display}],
                "text": DISPOSITION_TEXT[rec.disposition],
            }
        if hosp:
            res["hospitalization"] = hosp
        return res

    def visit(self, rec: VisitRec, meta: dict[str, Any]) -> dict[str, Any]:
        """A community consultation with a GP (AMB Encounter)."""
        res: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": rec.id,
            "meta": meta,
            "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB", "display": CLASS_DISPLAY["AMB"]},
            "subject": {"reference": f"Patient/{rec.patient}"},
            "participant": [{"individual": {"reference": f"Practitioner/{rec.gp}"}}],
            "period": {"start": self.ts(rec.start), "end": self.ts(rec.end)},
            "reasonCode": [
                {
                    "text": "Consultation de suivi après hospitalisation"
                    if rec.reason == "followup"
                    else "Consultation de médecine générale"
                }
            ],
        }
        if rec.appointment:
            res["appointment"] = [{"reference": f"Appointment/{rec.appointment}"}]
        return res

    def referral(self, rec: ReferralRec, meta: dict[str, Any]) -> dict[str, Any]:
        """A GP's referral to a hospital service (ServiceRequest)."""
        svc = self.territory.services[rec.service]
        return {
            "resourceType": "ServiceRequest",
            "id": rec.id,
            "meta": meta,
            "status": rec.status,
            "intent": "order",
            "category": [
                {"coding": [{"system": SNOMED, "code": "3457005", "display": "Patient referral"}]}
            ],
            "code": {
                "coding": [{"system": SERVICE_SYSTEM, "code": svc.code, "display": svc.display}],
                "text": f"Demande d'admission en {svc.display}",
            },
            "subject": {"reference": f"Patient/{rec.patient}"},
            "authoredOn": self.ts(rec.authored),
            "requester": {"reference": f"Practitioner/{rec.gp}"},
            "performer": [{"reference": f"Organization/{rec.establishment}"}],
        }

    def appointment(self, rec: AppointmentRec, meta: dict[str, Any]) -> dict[str, Any]:
        """A scheduled admission or a community follow-up (Appointment)."""
        participants: list[dict[str, Any]] = [
            {"actor": {"reference": f"Patient/{rec.patient}"}, "status": "accepted"}
        ]
        if rec.practitioner:
            participants.append(
                {"actor": {"reference": f"Practitioner/{rec.practitioner}"}, "status": "accepted"}
            )
        if rec.purpose == "admission":
            minutes = 30
            text = "Admission programmée"
            if rec.service:
                svc = self.territory.services[rec.service]
                text += f" en {svc.display}"
        else:
            minutes = 20
            text = "Consultation de suivi après hospitalisation"
        res: dict[str, Any] = {
            "resourceType": "Appointment",
            "id": rec.id,
            "meta": meta,
            "status": rec.status,
            "description": text,
            "start": self.ts(rec.start),
            "end": self.ts(rec.start + timedelta(minutes=minutes)),
            "created": self.ts(rec.created),
            "participant": participants,
        }
        if rec.service:
            svc = self.territory.services[rec.service]
            res["serviceType"] = [
                {"coding": [{"system": SERVICE_SYSTEM, "code": svc.code, "display": svc.display}]}
            ]
        if rec.based_on:
            res["basedOn"] = [{"reference": f"ServiceRequest/{rec.based_on}"}]
        return res

    def home_care(self, rec: HomeCareRec, meta: dict[str, Any]) -> dict[str, Any]:
        """Home nursing after discharge (EpisodeOfCare)."""
        period = {"start": self.ts(rec.start)}
        if rec.end is not None:
            period["end"] = self.ts(rec.end)
        return {
            "resourceType": "EpisodeOfCare",
            "id": rec.id,
            "meta": meta,
            "status": rec.status,
            "type": [
                {
                    "coding": [
                        {
                            "system": HOME_CARE_SYSTEM,
                            "code": "home-nursing",
                            "display": "Soins infirmiers à domicile",
                        }
                    ]
                }
            ],
            "patient": {"reference": f"Patient/{rec.patient}"},
            "managingOrganization": {"reference": f"Organization/{rec.provider}"},
            "period": period,
        }


def message_key(resource: dict[str, Any]) -> str:
    """The Kafka key of a resource: its patient's id, else `Type/id` (docs/FHIR_PROFILE.md).

    An R4 Appointment names its patient only among its participants; look there too.
    """
    key = patient_key(resource)
    if key:
        return key
    for participant in resource.get("participant") or []:
        ref = (participant.get("actor") or {}).get("reference", "")
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref.removeprefix("Patient/")
    return f"{resource.get('resourceType')}/{resource.get('id')}"
