"""HL7 v2.5 ADT (IHE PAM and its French extension PAM.fr) → FHIR R4. Pure: no I/O, no clock.

Three steps, each a plain function:

1. `parse_adt(raw, tz)`: MLLP payload bytes → `AdtMessage`, or `Hl7Rejection` naming the segment
   and field at fault (AE) or the unsupported trigger/version (AR). MSH-18 picks the character set
   (ASCII, 8859/1, 8859/15, UNICODE UTF-8); TS values without an offset are read in `tz`.
2. `apply_adt(state, msg)`: the stay's movement history (`EncounterState`) with the message
   applied. PAM.fr movements are identified by ZBE-1 and carry an action in ZBE-4: INSERT adds
   the movement (a repeat changes nothing), UPDATE replaces it, CANCEL withdraws exactly that
   movement (a cancel that arrives before its movement leaves a tombstone, so the late movement
   is ignored). Without ZBE (international PAM), a movement is identified by its trigger and
   time, and A11/A12/A13/A38/A52/A53 withdraw the latest movement of the kind they cancel.
3. `encounter_resource(state)`, `patient_resource(...)`, `location_resources(...)`: the FHIR R4
   resources the pathway engine reads (see `streams/core/fhir_map.py`): Encounter class from PV1-2,
   one `location[]` entry per move for the ward (`wa`) and the bed (`bd`) with its period and
   status, Location hierarchy bed → room → ward (point of care) → facility (`si`), Patient
   identifiers from PID-3 (IPP, INS with their OIDs).

The mapping follows the HL7 v2-to-FHIR ADT_A01 message map: MSH → (provenance), PID → Patient,
PV1 → Encounter, PV1-3 → Location. Ids are stable: Patient.id is the IPP (PID-3 of type PI),
Encounter.id the visit number (PV1-19), Location ids are built from the facility and the PV1-3
components, so that every message about a stay updates one Encounter.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any, TypeVar

import hl7

from ingest.invariants import FIRST_YEAR, LAST_YEAR
from ingest.outcome import FORBIDDEN_CHARS, IngestError

# --- Vocabulary -----------------------------------------------------------------------------------

SUPPORTED_VERSIONS = frozenset({"2.3.1", "2.4", "2.5", "2.5.1", "2.6"})
# Movements: each one is a row of the stay's history.
ADMISSIONS = frozenset({"A01", "A04", "A05"})
MOVEMENT_TRIGGERS = frozenset({"A01", "A04", "A05", "A02", "A03", "A06", "A07", "A21", "A22"})
# PAM.fr Z99: update of a movement, named by ZBE-1 with its original trigger in ZBE-6.
UPDATE_TRIGGERS = frozenset({"Z99"})
# Cancel trigger → the movement triggers it withdraws.
CANCELS: dict[str, frozenset[str]] = {
    "A11": frozenset({"A01", "A04"}),
    "A12": frozenset({"A02"}),
    "A13": frozenset({"A03"}),
    "A38": frozenset({"A05"}),
    "A52": frozenset({"A21"}),
    "A53": frozenset({"A22"}),
}
VISIT_TRIGGERS = MOVEMENT_TRIGGERS | UPDATE_TRIGGERS | frozenset(CANCELS) | {"A08"}
PATIENT_TRIGGERS = frozenset({"A08", "A40"})
SUPPORTED_TRIGGERS = VISIT_TRIGGERS | PATIENT_TRIGGERS
ACTIONS = frozenset({"INSERT", "UPDATE", "CANCEL"})

# HL7 table 0004 (patient class) → FHIR v3 ActCode (Encounter.class).
PATIENT_CLASS = {
    "E": "EMER",
    "I": "IMP",
    "B": "IMP",
    "P": "IMP",
    "O": "AMB",
    "R": "AMB",
    "C": "AMB",
    "N": "AMB",
}
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CLASS_DISPLAY = {"EMER": "emergency", "IMP": "inpatient encounter", "AMB": "ambulatory"}

# INS (identifiant national de santé) OIDs: INS-NIR, INS-NIR test, INS-NIR demonstration.
INS_OIDS = frozenset({"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"})
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
FR_V2_0203 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
NUBC_SYSTEM = "http://www.nubc.org/patient-discharge"
DISCHARGE_SYSTEM = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
ADMIT_SOURCE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0023"
LOCATION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/location-physical-type"
# ZFM-3 (PAM.fr mode de sortie PMSI) → HL7 discharge-disposition.
ZFM_DISCHARGE = {"6": "hosp", "7": "other-hcf", "8": "home", "9": "exp"}

# MSH-18 → Python codec. Empty MSH-18 means ASCII; a feed that sends Latin-1 without saying so
# is common, so an undeclared message is decoded as UTF-8 and, failing that, Latin-1.
CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
}

# HL7 table 0357 (message error condition codes) used in ERR-3.
ERR_SEGMENT_SEQUENCE = "100"
ERR_REQUIRED = "101"
ERR_DATA_TYPE = "102"
ERR_TABLE_VALUE = "103"
ERR_MESSAGE_TYPE = "200"
ERR_EVENT = "201"
ERR_VERSION = "203"
ERR_UNKNOWN_KEY = "204"
# Application record locked: here, a patient another integrator owns.
ERR_LOCKED = "206"
ERR_INTERNAL = "207"

_ID_SAFE = re.compile(r"[^A-Za-z0-9.\-]+")
# HL7 v2's null value (2.5, section 2.5.3): the field has no value.
HL7_NULL = '""'
_TS = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$",
)


_T = TypeVar("_T")


class Hl7Error(IngestError):
    """Base exception of the HL7 v2 mapping."""


@dataclass
class Hl7Rejection(Hl7Error):
    """A message the listener refuses: ACK code (AE or AR), the segment and field at fault,
    an HL7 table 0357 error code and a sentence for the sender's interface team."""

    ack_code: str
    reason: str
    text: str
    segment: str = ""
    field_no: int = 0
    component: int = 0
    error_code: str = ERR_REQUIRED

    def __post_init__(self) -> None:
        super().__init__(self.summary)

    @property
    def location(self) -> str:
        """`PV1-3` style name of the element at fault ('' when the message as a whole)."""
        if not self.segment:
            return ""
        if not self.field_no:
            return self.segment
        comp = f".{self.component}" if self.component else ""
        return f"{self.segment}-{self.field_no}{comp}"

    @property
    def summary(self) -> str:
        """One line: the location and the text."""
        return f"{self.location}: {self.text}" if self.location else self.text


def _ae(
    reason: str, text: str, segment: str, field_no: int = 0, code: str = ERR_REQUIRED
) -> Hl7Rejection:
    return Hl7Rejection("AE", reason, text, segment, field_no, error_code=code)


# --- Parsed message -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Identifier:
    """One PID-3 (or MRG-1) repetition: CX value, assigning authority, type code."""

    value: str
    system: str
    type_code: str
    authority: str = ""


@dataclass(frozen=True)
class Place:
    """PV1-3 / PV1-6 / PV1-11 (PL): point of care (the ward), room, bed, facility."""

    point_of_care: str
    room: str = ""
    bed: str = ""
    facility: str = ""

    def to_json(self) -> dict[str, str]:
        """The place as a JSON object."""
        return {"poc": self.point_of_care, "room": self.room, "bed": self.bed, "fac": self.facility}

    @staticmethod
    def from_json(data: dict[str, str] | None) -> Place | None:
        """The place stored by `to_json` (None stays None)."""
        if not data:
            return None
        return Place(data["poc"], data.get("room", ""), data.get("bed", ""), data.get("fac", ""))


@dataclass(frozen=True)
class PatientInfo:
    """PID: who the message is about."""

    patient_id: str
    identifiers: tuple[Identifier, ...]
    family: str = ""
    given: str = ""
    birth_date: str = ""
    gender: str = ""
    deceased_at: datetime | None = None


@dataclass(frozen=True)
class VisitInfo:
    """PV1 (and PV2/ZFM) values that describe the stay."""

    encounter_id: str
    nda_system: str
    class_code: str
    place: Place | None
    prior_place: Place | None
    temporary_place: Place | None
    admit_at: datetime | None
    discharge_at: datetime | None
    admit_source: str
    service: str
    disposition: str
    disposition_system: str
    facility: str


@dataclass(frozen=True)
class MovementInfo:
    """ZBE (PAM.fr): the movement the message is about."""

    movement_id: str
    action: str
    at: datetime | None
    original_trigger: str
    historic: bool
    medical_unit: str


@dataclass(frozen=True)
class AdtMessage:
    """A parsed, checked ADT message."""

    control_id: str
    version: str
    trigger: str
    structure: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    processing_id: str
    message_at: datetime
    event_at: datetime
    patient: PatientInfo
    visit: VisitInfo | None
    movement: MovementInfo | None
    merged_patient: PatientInfo | None
    charset: str
    field_separator: str = "|"
    encoding_characters: str = "^~\\&"


@dataclass(frozen=True)
class MessageHeader:
    """The MSH fields an ACK needs, read even from messages that fail later checks."""

    field_separator: str = "|"
    encoding_characters: str = "^~\\&"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = "2.5"
    message_code: str = ""
    trigger: str = ""
    charset: str = ""


# --- Small readers ------------------------------------------------------------------------------


def evolve(obj: _T, **changes: Any) -> _T:
    """A copy of frozen dataclass `obj` with `changes` (what `dataclasses.replace` does, without
    re-running `__init__`, which costs more than the rest of applying a message)."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


def fhir_id(text: str) -> str:
    """A FHIR id ([A-Za-z0-9-.]{1,64}) for `text`: kept as is when it already is one, else its
    safe characters with a short hash (distinct source values keep distinct ids)."""
    if text and len(text) <= 64 and not _ID_SAFE.search(text):
        return text
    safe = _ID_SAFE.sub("-", text).strip("-")[:48] or "x"
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def parse_ts(value: str, tz: tzinfo) -> datetime | None:
    """An HL7 TS/DTM (`YYYY[MM[DD[HH[MM[SS[.S…]]]]]][±ZZZZ]`) as an aware datetime.

    Without an offset the time is local to `tz` (the territory's zone). Empty → None; ValueError
    when the text is not a TS.
    """
    text = value.strip()
    if not text:
        return None
    m = _TS.match(text)
    if not m:
        raise ValueError(f"{value!r} is not an HL7 TS (YYYYMMDDHHMMSS[±ZZZZ])")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    if not FIRST_YEAR <= int(year) <= LAST_YEAR:
        raise ValueError(f"{value!r} is outside the years {FIRST_YEAR}–{LAST_YEAR}")
    micro = int((frac or "0").ljust(6, "0")[:6])
    naive = datetime(  # noqa: DTZ001 - the zone is attached just below
        int(year),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micro,
    )
    if offset:
        sign = 1 if offset[0] == "+" else -1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        at = naive.replace(tzinfo=timezone(sign * delta))
    else:
        at = naive.replace(tzinfo=tz)
        local = at.utcoffset()
        if local is not None and local.seconds % 60:
            # Before 1911 Paris kept its mean solar time (+00:09:21): a FHIR offset has no
            # seconds, so the time keeps its wall clock with the offset's whole minutes.
            at = naive.replace(tzinfo=timezone(timedelta(minutes=local // timedelta(minutes=1))))
    # The year as written is checked above, as the gateway and the stream worker check it: the
    # FHIR time keeps this offset, so `20991231233000-0100` (an instant of 2100) is read alike.
    return at


def _norm_rep(rep: Any) -> list[list[str]]:
    """One repetition as components of subcomponents (python-hl7 only nests where a
    separator occurs, so a level may be missing)."""
    if isinstance(rep, str):
        return [[rep]]
    if isinstance(rep, hl7.Component):
        return [[str(x) for x in rep]]
    return [[k] if isinstance(k, str) else [str(x) for x in k] for k in rep]


def _norm_field(value: Any) -> list[list[list[str]]]:
    """One field as repetitions of components of subcomponents."""
    if isinstance(value, str):
        return [[[value]]]
    kids = list(value)
    if kids and isinstance(kids[0], hl7.Repetition):
        return [_norm_rep(k) for k in kids]
    return [_norm_rep(value)]


class _Segment:
    """1-based access to one parsed segment; never raises on absent fields.

    Values are read by indexing python-hl7's containers as the plain lists they are:
    its `extract_field` costs as much per call as parsing a segment, and a message reads some
    forty values.
    """

    def __init__(self, segment: Any, esc: str = "\\") -> None:
        self.segment = segment
        self.name = str(segment[0][0]) if segment else ""
        self.esc = esc
        self._fields: dict[int, list[list[list[str]]]] = {}

    def _field(self, field_no: int) -> list[list[list[str]]]:
        found = self._fields.get(field_no)
        if found is None:
            items = list.__getitem__(self.segment, field_no) if field_no < len(self.segment) else ""
            found = self._fields[field_no] = _norm_field(items)
        return found

    def get(self, field_no: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        segment = self.segment
        if field_no >= len(segment):
            return ""
        # python-hl7 nests field → repetition → component → subcomponent, but a part without
        # the separators of the levels below is kept as its text: that text is the first
        # element of each level below it.
        node: Any = list.__getitem__(segment, field_no)
        for index in (rep, comp, sub):
            if isinstance(node, str):
                if index != 1:
                    return ""
            elif index > len(node):
                return ""
            else:
                node = list.__getitem__(node, index - 1)
        value = node if isinstance(node, str) else str(node)
        if self.esc in value and not (self.name == "MSH" and field_no <= 2):
            value = hl7.util.unescape(self.segment, value)
        bad = FORBIDDEN_CHARS.search(value)
        if bad is not None:
            # As at the FHIR gateway: no control character (raw, or escaped as \X00\) reaches
            # a resource, SQL's text or the dead letters' readers.
            raise _ae(
                "invalid-character",
                f"caractère de contrôle U+{ord(bad.group()):04X} interdit",
                self.name,
                field_no,
                code=ERR_DATA_TYPE,
            )
        value = value.strip()
        # `""` is HL7's null ("no value; delete the one held"), not a value: read as text, a
        # PID-3 or PV1-19 of `""` would make one patient, or one stay, of every message that
        # sends it.
        return "" if value == HL7_NULL else value

    def reps(self, field_no: int) -> int:
        """How many repetitions field `field_no` has (0 when empty)."""
        if field_no >= len(self.segment):
            return 0
        field = self._field(field_no)
        if len(field) == 1 and not any(any(c) for c in field[0]):
            return 0
        return len(field)


def _index(message: Any) -> dict[str, _Segment]:
    """The first segment of each name."""
    esc = getattr(message, "esc", "\\") or "\\"
    out: dict[str, _Segment] = {}
    for seg in message:
        if not seg:
            continue
        head = list.__getitem__(seg, 0)
        # A segment of blanks is parsed as its text alone.
        name = (head if isinstance(head, str) else str(list.__getitem__(head, 0))).strip()
        if name and name not in out:
            out[name] = _Segment(seg, esc)
    return out


def _one(segments: dict[str, _Segment], name: str, required: bool) -> _Segment | None:
    found = segments.get(name)
    if found is None:
        if required:
            raise _ae("missing-segment", f"segment {name} absent", name, code=ERR_SEGMENT_SEQUENCE)
        return None
    return found


def _ts(seg: _Segment, field_no: int, tz: tzinfo, comp: int = 1) -> datetime | None:
    text = seg.get(field_no, comp=comp)
    try:
        return parse_ts(text, tz)
    except (ValueError, OverflowError) as exc:
        raise _ae(
            "invalid-ts", f"horodatage invalide {text!r}: {exc}", seg.name, field_no, ERR_DATA_TYPE
        ) from exc


def read_header(raw: bytes) -> MessageHeader:
    """The MSH fields of `raw`, read with no other check (for the ACK of any message).

    MSH is ASCII in every character set HL7 allows, so it is read before decoding.
    """
    head = raw.lstrip(b"\r\n\x0b ")
    cut = len(head)
    for end in (b"\r", b"\n"):
        found = head.find(end)
        if 0 <= found < cut:
            cut = found
    first = head[:cut].decode("latin-1")
    if not first.startswith("MSH") or len(first) < 8:
        return MessageHeader()
    sep = first[3]
    fields = first.split(sep)
    enc = fields[1] if len(fields) > 1 else "^~\\&"
    comp = enc[0] if enc else "^"

    def f(n: int) -> str:
        # MSH-1 is the separator itself, so MSH-n is at index n-1.
        return fields[n - 1].strip() if len(fields) >= n else ""

    msg_type = f(9).split(comp)
    return MessageHeader(
        field_separator=sep,
        encoding_characters=enc[:4] or "^~\\&",
        sending_application=f(3).split(comp)[0],
        sending_facility=f(4).split(comp)[0],
        receiving_application=f(5).split(comp)[0],
        receiving_facility=f(6).split(comp)[0],
        control_id=f(10)[:199],
        processing_id=f(11).split(comp)[0] or "P",
        version=f(12).split(comp)[0] or "2.5",
        message_code=msg_type[0] if msg_type else "",
        trigger=msg_type[1] if len(msg_type) > 1 else "",
        charset=f(18).split(enc[1] if len(enc) > 1 else "~")[0],
    )


def decode(raw: bytes, charset: str) -> str:
    """The message text in the MSH-18 character set; Hl7Rejection (MSH-18) when it does not
    decode or the set is not supported."""
    name = charset.strip().upper()
    if not name:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    codec = CHARSETS.get(name)
    if codec is None:
        raise _ae(
            "charset",
            f"jeu de caractères {charset!r} non pris en charge",
            "MSH",
            18,
            ERR_TABLE_VALUE,
        )
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise _ae(
            "charset",
            f"le message n'est pas en {charset} (octet {exc.start})",
            "MSH",
            18,
            ERR_DATA_TYPE,
        ) from exc


def _identifier(seg: _Segment, field_no: int, rep: int) -> Identifier | None:
    value = seg.get(field_no, rep, 1)
    if not value:
        return None
    namespace = seg.get(field_no, rep, 4, 1)
    oid = seg.get(field_no, rep, 4, 2)
    type_code = seg.get(field_no, rep, 5)
    if oid and re.fullmatch(r"[0-2](\.\d+)+", oid):
        system = f"urn:oid:{oid}"
    elif namespace:
        system = f"urn:hl7v2:authority:{fhir_id(namespace)}"
    else:
        system = ""
    if oid in INS_OIDS and type_code in ("", "NH"):
        type_code = "INS"
    return Identifier(value=value, system=system, type_code=type_code, authority=namespace or oid)


def _patient_info(seg: _Segment, tz: tzinfo, field_no: int = 3) -> PatientInfo:
    ids = [_identifier(seg, field_no, r) for r in range(1, max(seg.reps(field_no), 1) + 1)]
    identifiers = tuple(i for i in ids if i is not None)
    if not identifiers:
        raise _ae("missing-identifier", "aucun identifiant patient", seg.name, field_no)
    ipp = next((i for i in identifiers if i.type_code == "PI"), None)
    key = ipp or next((i for i in identifiers if i.type_code != "INS"), identifiers[0])
    if seg.name != "PID":
        return PatientInfo(patient_id=fhir_id(key.value), identifiers=identifiers)
    gender = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other"}.get(
        seg.get(8), ""
    )
    birth = _ts(seg, 7, tz)
    deceased_flag = seg.get(30)
    deceased_at = _ts(seg, 29, tz) if deceased_flag != "N" else None
    return PatientInfo(
        patient_id=fhir_id(key.value),
        identifiers=identifiers,
        family=seg.get(5, 1, 1),
        given=seg.get(5, 1, 2),
        birth_date=birth.date().isoformat() if birth else "",
        gender=gender,
        deceased_at=deceased_at,
    )


def _place(seg: _Segment, field_no: int, default_facility: str) -> Place | None:
    poc = seg.get(field_no, 1, 1)
    room = seg.get(field_no, 1, 2)
    bed = seg.get(field_no, 1, 3)
    facility = seg.get(field_no, 1, 4, 1) or seg.get(field_no, 1, 4, 2) or default_facility
    if not poc:
        if room or bed:
            raise _ae(
                "invalid-location",
                "lit ou chambre sans unité de soins (composant 1)",
                seg.name,
                field_no,
            )
        return None
    return Place(poc, room, bed, facility)


def _visit_info(
    pv1: _Segment, zfm: _Segment | None, facility: str, tz: tzinfo, trigger: str
) -> VisitInfo:
    nda = pv1.get(19)
    if not nda:
        raise _ae("missing-visit-number", "numéro de venue (NDA) absent", "PV1", 19)
    raw_class = pv1.get(2)
    if not raw_class:
        raise _ae("missing-class", "classe de patient absente", "PV1", 2)
    class_code = PATIENT_CLASS.get(raw_class)
    if class_code is None:
        raise _ae(
            "invalid-class",
            f"classe de patient {raw_class!r} inconnue (table HL7 0004: E I O P R B C N)",
            "PV1",
            2,
            ERR_TABLE_VALUE,
        )
    place = _place(pv1, 3, facility)
    if place is None and trigger in ("A01", "A02"):
        raise _ae("missing-location", "localisation du patient absente", "PV1", 3)
    disposition, disposition_system = "", ""
    if zfm is not None and zfm.get(3) in ZFM_DISCHARGE:
        disposition, disposition_system = ZFM_DISCHARGE[zfm.get(3)], DISCHARGE_SYSTEM
    elif pv1.get(36):
        disposition, disposition_system = pv1.get(36), NUBC_SYSTEM
    nda_oid = pv1.get(19, 1, 4, 2)
    nda_ns = pv1.get(19, 1, 4, 1)
    return VisitInfo(
        encounter_id=fhir_id(nda),
        nda_system=f"urn:oid:{nda_oid}"
        if nda_oid
        else f"urn:hl7v2:visit:{fhir_id(nda_ns or facility)}",
        class_code=class_code,
        place=place,
        prior_place=_place(pv1, 6, facility),
        temporary_place=_place(pv1, 11, facility),
        admit_at=_ts(pv1, 44, tz),
        discharge_at=_ts(pv1, 45, tz),
        admit_source=pv1.get(14),
        service=pv1.get(10),
        disposition=disposition,
        disposition_system=disposition_system,
        facility=(place.facility if place else "") or facility,
    )


_SEGMENT_ENDS = re.compile(r"[\r\n]+")


def _check_encoding_characters(raw: bytes) -> None:
    """AE on MSH-2 unless it holds the component, repetition, escape and subcomponent
    separators (and, from v2.7, the truncation character), each once and none of them the
    field separator MSH-1. MSH is ASCII in every character set, so it is read before decoding."""
    start = raw.lstrip(b"\r\n\x0b ")
    if len(start) < 4:
        return  # too short to hold MSH-2: the parse says what is wrong
    field_sep = start[3:4]
    chars = start[4:].split(field_sep, 1)[0].split(b"\r", 1)[0].split(b"\n", 1)[0]
    if len(chars) not in (4, 5) or len(set(chars)) != len(chars) or field_sep in chars:
        shown = chars[:8].decode("latin-1")
        raise _ae(
            "invalid-encoding-characters",
            f"caractères d'encodage « {shown} » invalides : MSH-2 en donne quatre, tous "
            "différents et autres que le séparateur de champs (^~\\& d'ordinaire)",
            "MSH",
            2,
            ERR_DATA_TYPE,
        )


def parse_adt(raw: bytes, tz: tzinfo, header: MessageHeader | None = None) -> AdtMessage:
    """Parse and check one ADT message (the MLLP block's payload); `header` is `read_header(raw)`
    when the caller already has it.

    Raises Hl7Rejection: AR for a message type, trigger or version this listener does not take,
    AE (with the segment and field) for anything else it cannot read.
    """
    header = header or read_header(raw)
    if not header.message_code and not raw.lstrip(b"\r\n\x0b ").startswith(b"MSH"):
        raise _ae(
            "not-hl7",
            "le message ne commence pas par un segment MSH",
            "MSH",
            0,
            ERR_SEGMENT_SEQUENCE,
        )
    _check_encoding_characters(raw)
    text = decode(raw, header.charset)
    if "\n" in text or "\r\r" in text:
        # A segment ends with CR; engines also end them with LF or CRLF, or leave blank lines.
        text = "\r".join(s for s in _SEGMENT_ENDS.split(text) if s.strip())
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises several types on malformed text
        raise _ae(
            "unparsable",
            f"message illisible: {exc or type(exc).__name__}",
            "MSH",
            0,
            ERR_SEGMENT_SEQUENCE,
        ) from exc
    segments = _index(message)
    msh = _one(segments, "MSH", True)
    assert msh is not None
    if header.message_code != "ADT" and header.message_code != "ACK":
        raise Hl7Rejection(
            "AR",
            "unsupported-type",
            f"type de message {header.message_code!r} non pris en charge (ADT)",
            "MSH",
            9,
            error_code=ERR_MESSAGE_TYPE,
        )
    if header.version not in SUPPORTED_VERSIONS:
        raise Hl7Rejection(
            "AR",
            "unsupported-version",
            f"version {header.version!r} non prise en charge "
            f"({', '.join(sorted(SUPPORTED_VERSIONS))})",
            "MSH",
            12,
            error_code=ERR_VERSION,
        )
    trigger = header.trigger
    if header.message_code != "ADT" or trigger not in SUPPORTED_TRIGGERS:
        raise Hl7Rejection(
            "AR",
            "unsupported-trigger",
            f"événement {header.message_code}^{trigger} non pris en charge",
            "MSH",
            9,
            2,
            ERR_EVENT,
        )
    if not header.control_id:
        raise _ae("missing-control-id", "identifiant du message absent", "MSH", 10)
    if not header.sending_facility:
        raise _ae("missing-facility", "établissement émetteur absent", "MSH", 4)
    message_at = _ts(msh, 7, tz)
    if message_at is None:
        raise _ae("missing-ts", "date/heure du message absente", "MSH", 7)
    evn = _one(segments, "EVN", False)
    event_at = (_ts(evn, 6, tz) or _ts(evn, 2, tz)) if evn is not None else None
    pid = _one(segments, "PID", True)
    assert pid is not None
    patient = _patient_info(pid, tz)
    visit = None
    movement = None
    merged = None
    if trigger == "A40":
        mrg = _one(segments, "MRG", True)
        assert mrg is not None
        merged = _patient_info(mrg, tz, 1)
        if merged.patient_id == patient.patient_id:
            raise _ae(
                "merge-same",
                "le patient fusionné est le patient conservé",
                "MRG",
                1,
                ERR_UNKNOWN_KEY,
            )
    else:
        pv1 = _one(segments, "PV1", trigger in VISIT_TRIGGERS and trigger != "A08")
        if pv1 is not None:
            visit = _visit_info(
                pv1, _one(segments, "ZFM", False), header.sending_facility, tz, trigger
            )
        elif trigger != "A08":
            raise _ae("missing-segment", "segment PV1 absent", "PV1", 0, ERR_SEGMENT_SEQUENCE)
        zbe = _one(segments, "ZBE", trigger in UPDATE_TRIGGERS)
        if zbe is not None:
            movement = _movement_info(zbe, tz, trigger)
    return AdtMessage(
        control_id=header.control_id,
        version=header.version,
        trigger=trigger,
        structure=msh.get(9, 1, 3),
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        receiving_application=header.receiving_application,
        receiving_facility=header.receiving_facility,
        processing_id=header.processing_id,
        message_at=message_at,
        event_at=event_at or (movement.at if movement and movement.at else None) or message_at,
        patient=patient,
        visit=visit,
        movement=movement,
        merged_patient=merged,
        charset=header.charset,
        field_separator=header.field_separator,
        encoding_characters=header.encoding_characters,
    )


def _movement_info(zbe: _Segment, tz: tzinfo, trigger: str) -> MovementInfo:
    movement_id = zbe.get(1)
    if not movement_id:
        raise _ae("missing-movement-id", "identifiant du mouvement absent", "ZBE", 1)
    action = zbe.get(4) or "INSERT"
    if action not in ACTIONS:
        raise _ae(
            "invalid-action",
            f"action {action!r} inconnue (INSERT, UPDATE, CANCEL)",
            "ZBE",
            4,
            ERR_TABLE_VALUE,
        )
    original = zbe.get(6)
    if trigger in UPDATE_TRIGGERS and not original:
        raise _ae("missing-original-trigger", "événement d'origine absent", "ZBE", 6)
    if original and original not in MOVEMENT_TRIGGERS:
        raise _ae(
            "invalid-original-trigger",
            f"événement d'origine {original!r} inconnu",
            "ZBE",
            6,
            ERR_TABLE_VALUE,
        )
    at = _ts(zbe, 2, tz)
    if at is None and action != "CANCEL":
        raise _ae("missing-movement-ts", "date/heure du mouvement absente", "ZBE", 2)
    ns = zbe.get(1, 1, 2)
    return MovementInfo(
        movement_id=f"{ns}:{movement_id}" if ns else movement_id,
        action=action,
        at=at,
        original_trigger=original,
        historic=zbe.get(5) == "Y",
        medical_unit=zbe.get(7, 1, 10) or zbe.get(7, 1, 1),
    )


# --- Stay state: the movement history of one Encounter -------------------------------------------


@dataclass(frozen=True)
class Movement:
    """One movement of a stay: admission, transfer, discharge, class change, leave, return."""

    movement_id: str
    trigger: str
    at: datetime
    cancelled: bool = False
    place: Place | None = None
    class_code: str = ""
    disposition: str = ""
    disposition_system: str = ""
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        """The movement as JSON (stored between messages)."""
        return {
            "id": self.movement_id,
            "trigger": self.trigger,
            "at": self.at.isoformat(),
            "cancelled": self.cancelled,
            "place": self.place.to_json() if self.place else None,
            "class": self.class_code,
            "disp": self.disposition,
            "disp_sys": self.disposition_system,
            "seq": self.seq,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Movement:
        """The movement stored by `to_json`."""
        return Movement(
            movement_id=data["id"],
            trigger=data["trigger"],
            at=datetime.fromisoformat(data["at"]),
            cancelled=bool(data.get("cancelled")),
            place=Place.from_json(data.get("place")),
            class_code=data.get("class", ""),
            disposition=data.get("disp", ""),
            disposition_system=data.get("disp_sys", ""),
            seq=int(data.get("seq", 0)),
        )


@dataclass(frozen=True)
class EncounterState:
    """What is known of one stay: its patient, attributes and movements. `version` counts the
    Encounter versions published; it only grows."""

    encounter_id: str
    patient_id: str
    nda_system: str = ""
    facility: str = ""
    class_code: str = ""
    admit_at: datetime | None = None
    admit_source: str = ""
    service: str = ""
    movements: tuple[Movement, ...] = ()
    version: int = 0
    updated_at: datetime | None = None
    moved_from: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The state as JSON (stored in SQL between messages)."""
        return {
            "encounter_id": self.encounter_id,
            "patient_id": self.patient_id,
            "nda_system": self.nda_system,
            "facility": self.facility,
            "class": self.class_code,
            "admit_at": self.admit_at.isoformat() if self.admit_at else None,
            "admit_source": self.admit_source,
            "service": self.service,
            "movements": [m.to_json() for m in self.movements],
            "version": self.version,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "moved_from": list(self.moved_from),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> EncounterState:
        """The state stored by `to_json`."""
        admit = data.get("admit_at")
        updated = data.get("updated_at")
        return EncounterState(
            encounter_id=data["encounter_id"],
            patient_id=data["patient_id"],
            nda_system=data.get("nda_system", ""),
            facility=data.get("facility", ""),
            class_code=data.get("class", ""),
            admit_at=datetime.fromisoformat(admit) if admit else None,
            admit_source=data.get("admit_source", ""),
            service=data.get("service", ""),
            movements=tuple(Movement.from_json(m) for m in data.get("movements") or []),
            version=int(data.get("version", 0)),
            updated_at=datetime.fromisoformat(updated) if updated else None,
            moved_from=tuple(data.get("moved_from") or ()),
        )

    def content(self) -> tuple[Any, ...]:
        """Everything that shows in the Encounter (not the version): equal content, no new
        version."""
        return (
            self.patient_id,
            self.nda_system,
            self.facility,
            self.class_code,
            self.admit_at,
            self.admit_source,
            self.service,
            tuple(
                (
                    m.movement_id,
                    m.trigger,
                    m.at,
                    m.cancelled,
                    m.place,
                    m.class_code,
                    m.disposition,
                    m.disposition_system,
                )
                for m in self.movements
            ),
        )


def _movement_id(msg: AdtMessage, trigger: str) -> str:
    if msg.movement is not None:
        return msg.movement.movement_id
    return f"{trigger}@{msg.event_at.astimezone(UTC).strftime('%Y%m%d%H%M%S')}"


def _cancel_target(
    movements: list[Movement], msg: AdtMessage, kinds: frozenset[str]
) -> tuple[int | None, str]:
    """The index of the movement a cancel withdraws (None if it is not known yet) and its id."""
    if msg.movement is not None:
        mid = msg.movement.movement_id
        for i, m in enumerate(movements):
            if m.movement_id == mid:
                return i, mid
        return None, mid
    for i in sorted(
        range(len(movements)), key=lambda j: (movements[j].at, movements[j].seq), reverse=True
    ):
        if movements[i].trigger in kinds and not movements[i].cancelled:
            return i, movements[i].movement_id
    return None, ""


def apply_adt(state: EncounterState | None, msg: AdtMessage) -> EncounterState:
    """The stay's state after `msg` (a visit-level message: msg.visit is set).

    Idempotent: applying the same message twice gives the state applying it once gave.
    """
    visit = msg.visit
    if visit is None:
        raise Hl7Error("apply_adt needs a message with a PV1 segment")
    if state is None:
        state = EncounterState(encounter_id=visit.encounter_id, patient_id=msg.patient.patient_id)
    movements = list(state.movements)
    next_seq = max((m.seq for m in movements), default=0) + 1
    trigger = msg.trigger
    action = msg.movement.action if msg.movement else "INSERT"
    at = (msg.movement.at if msg.movement and msg.movement.at else None) or msg.event_at
    if trigger in CANCELS or action == "CANCEL":
        kinds = CANCELS.get(trigger) or frozenset(
            {msg.movement.original_trigger}
            if msg.movement and msg.movement.original_trigger
            else MOVEMENT_TRIGGERS
        )
        index, mid = _cancel_target(movements, msg, kinds)
        if index is not None:
            if not movements[index].cancelled:
                movements[index] = replace(movements[index], cancelled=True)
        elif mid:
            # The cancel came before its movement: remember it, so the late movement is ignored.
            original = (msg.movement.original_trigger if msg.movement else "") or min(kinds)
            movements.append(Movement(mid, original, at, cancelled=True, seq=next_seq))
    elif trigger in MOVEMENT_TRIGGERS or trigger in UPDATE_TRIGGERS:
        kind = trigger
        if trigger in UPDATE_TRIGGERS or action == "UPDATE":
            kind = (msg.movement.original_trigger if msg.movement else "") or trigger
        mid = _movement_id(msg, kind)
        new = Movement(
            movement_id=mid,
            trigger=kind,
            at=at,
            place=visit.place,
            class_code=visit.class_code,
            disposition=visit.disposition if kind == "A03" else "",
            disposition_system=visit.disposition_system if kind == "A03" else "",
        )
        found = next((i for i, m in enumerate(movements) if m.movement_id == mid), None)
        if found is None:
            movements.append(evolve(new, seq=next_seq))
        elif movements[found].cancelled:
            pass  # a withdrawn movement stays withdrawn (its INSERT or UPDATE came late)
        elif action == "UPDATE" or trigger in UPDATE_TRIGGERS:
            movements[found] = evolve(new, seq=movements[found].seq)
    # Stay attributes: the latest non-empty value; the first class is the admission's.
    admit_at = state.admit_at or visit.admit_at
    if visit.admit_at and trigger in ADMISSIONS | UPDATE_TRIGGERS | {"A08"}:
        admit_at = visit.admit_at
    return evolve(
        state,
        patient_id=msg.patient.patient_id,
        nda_system=visit.nda_system or state.nda_system,
        facility=visit.facility or state.facility,
        class_code=state.class_code or visit.class_code,
        admit_at=admit_at,
        admit_source=visit.admit_source or state.admit_source,
        service=visit.service or state.service,
        movements=tuple(movements),
        updated_at=max(filter(None, (state.updated_at, msg.message_at))),
    )


# --- FHIR resources ----------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def _iso(at: datetime) -> str:
    # A stay's every version writes all its movements' times again.
    return at.isoformat()


@lru_cache(maxsize=65536)
def location_ids(place: Place) -> dict[str, str]:
    """Location ids of a place: facility, ward (point of care), room, bed (those given)."""
    fac = fhir_id(place.facility or "hl7")
    ids = {"facility": fac, "ward": fhir_id(f"{fac}-{place.point_of_care}")}
    if place.room:
        ids["room"] = fhir_id(f"{ids['ward']}-{place.room}")
    if place.bed:
        ids["bed"] = fhir_id(f"{ids.get('room', ids['ward'])}-{place.bed}")
    return ids


def location_resources(place: Place) -> list[dict[str, Any]]:
    """The Location hierarchy a PV1-3 names: facility (`si`) ← ward (`wa`) ← room (`ro`) ←
    bed (`bd`), each `partOf` the one above; the facility is managed by its Organization."""
    ids = location_ids(place)

    def loc(lid: str, name: str, kind: str, parent: str | None) -> dict[str, Any]:
        res: dict[str, Any] = {
            "resourceType": "Location",
            "id": lid,
            "status": "active",
            "name": name,
            "mode": "instance",
            "physicalType": {"coding": [{"system": LOCATION_TYPE_SYSTEM, "code": kind}]},
        }
        if parent:
            res["partOf"] = {"reference": f"Location/{parent}"}
        else:
            res["managingOrganization"] = {"reference": f"Organization/{lid}"}
        return res

    out = [
        loc(ids["facility"], place.facility or "hl7", "si", None),
        loc(ids["ward"], place.point_of_care, "wa", ids["facility"]),
    ]
    if "room" in ids:
        out.append(loc(ids["room"], place.room, "ro", ids["ward"]))
    if "bed" in ids:
        out.append(loc(ids["bed"], place.bed, "bd", ids.get("room", ids["ward"])))
    return out


def _class_coding(code: str) -> dict[str, str]:
    return {"system": ACT_CODE_SYSTEM, "code": code, "display": CLASS_DISPLAY.get(code, code)}


def encounter_status(state: EncounterState) -> str:
    """planned (pre-admission only), in-progress, onleave, finished, or cancelled (every
    admission withdrawn)."""
    active = [m for m in state.movements if not m.cancelled]
    admissions = [m for m in state.movements if m.trigger in ADMISSIONS]
    if admissions and not any(not m.cancelled for m in admissions):
        return "cancelled"
    if not active:
        return "cancelled"
    kinds = {m.trigger for m in active}
    if any(m.trigger == "A03" for m in active):
        return "finished"
    if kinds <= {"A05"}:
        return "planned"
    leaves = sorted((m for m in active if m.trigger in ("A21", "A22")), key=lambda m: (m.at, m.seq))
    if leaves and leaves[-1].trigger == "A21":
        return "onleave"
    return "in-progress"


def encounter_resource(state: EncounterState) -> dict[str, Any]:
    """The stay as one FHIR R4 Encounter (its whole history: the pathway engine replaces the
    previous version with it)."""
    status = encounter_status(state)
    active = sorted((m for m in state.movements if not m.cancelled), key=lambda m: (m.at, m.seq))
    admission = next((m for m in active if m.trigger in ADMISSIONS and m.trigger != "A05"), None)
    pre = next((m for m in active if m.trigger == "A05"), None)
    discharge = next((m for m in reversed(active) if m.trigger == "A03"), None)
    first = admission or pre
    start = first.at if first else (state.admit_at or (active[0].at if active else None))
    # An admission's class is the class the stay starts with; A06/A07 change it from then on.
    classes: list[tuple[datetime, str]] = []
    start_class = (first.class_code if first else "") or state.class_code or "IMP"
    if start is not None:
        classes.append((start, start_class))
    for m in active:
        if (
            m.trigger in ("A06", "A07")
            and m.class_code
            and (not classes or classes[-1][1] != m.class_code)
        ):
            classes.append((m.at, m.class_code))
    class_code = classes[-1][1] if classes else start_class
    moves = [
        m for m in active if m.place is not None and m.trigger in ADMISSIONS | {"A02", "A06", "A07"}
    ]
    if admission is not None:
        # A pre-admission's planned place is not a move once the patient is admitted.
        moves = [m for m in moves if m.trigger != "A05"]
    end = discharge.at if discharge else None
    entries: list[dict[str, Any]] = []
    for i, m in enumerate(moves):
        assert m.place is not None
        until = moves[i + 1].at if i + 1 < len(moves) else end
        if status == "planned":
            entry_status = "planned"
        elif status == "cancelled":
            entry_status = "completed"
        else:
            entry_status = "completed" if until is not None else "active"
        period = {"start": _iso(m.at)}
        if until is not None:
            period["end"] = _iso(until)
        ids = location_ids(m.place)
        for kind in ("wa", "bd"):
            lid = ids["ward"] if kind == "wa" else ids.get("bed")
            if lid is None:
                continue
            entries.append(
                {
                    "location": {"reference": f"Location/{lid}"},
                    "status": entry_status,
                    "physicalType": {"coding": [{"system": LOCATION_TYPE_SYSTEM, "code": kind}]},
                    "period": dict(period),
                }
            )
    res: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": state.encounter_id,
        "meta": {"versionId": str(state.version)},
        "status": status,
        "class": _class_coding(class_code),
        "subject": {"reference": f"Patient/{state.patient_id}"},
        "identifier": [{"system": state.nda_system, "value": state.encounter_id}]
        if state.nda_system
        else [],
    }
    if state.updated_at is not None:
        res["meta"]["lastUpdated"] = _iso(state.updated_at)
    if len(classes) > 1:
        history = []
        for i, (at, code) in enumerate(classes):
            period = {"start": _iso(at)}
            nxt = classes[i + 1][0] if i + 1 < len(classes) else end
            if nxt is not None:
                period["end"] = _iso(nxt)
            history.append({"class": _class_coding(code), "period": period})
        res["classHistory"] = history
    if start is not None:
        res["period"] = {"start": _iso(start)}
        if end is not None and status == "finished":
            res["period"]["end"] = _iso(max(end, start))
    if state.service:
        res["serviceType"] = {"coding": [{"code": state.service}]}
    if state.facility:
        res["serviceProvider"] = {"reference": f"Organization/{fhir_id(state.facility)}"}
    hospitalization: dict[str, Any] = {}
    if state.admit_source:
        hospitalization["admitSource"] = {
            "coding": [{"system": ADMIT_SOURCE_SYSTEM, "code": state.admit_source}]
        }
    if discharge is not None and discharge.disposition:
        hospitalization["dischargeDisposition"] = {
            "coding": [{"system": discharge.disposition_system, "code": discharge.disposition}]
        }
    if hospitalization:
        res["hospitalization"] = hospitalization
    if entries:
        res["location"] = entries
    if not res["identifier"]:
        del res["identifier"]
    return res


def withdrawn_encounter(state: EncounterState) -> dict[str, Any]:
    """The stay withdrawn from its patient (entered-in-error): what the merged patient's
    pathway receives when A40 moves the stay to the surviving patient."""
    res = encounter_resource(state)
    res["status"] = "entered-in-error"
    res.pop("location", None)
    return res


def patient_resource(
    info: PatientInfo, version: int, replaced_by: str | None = None, replaces: tuple[str, ...] = ()
) -> dict[str, Any]:
    """PID as a FHIR Patient: identifiers (IPP `PI`, INS with its OID), name, birth date, sex,
    death; `replaced_by`/`replaces` record an A40 merge as Patient.link."""
    identifiers = []
    for ident in info.identifiers:
        out: dict[str, Any] = {"value": ident.value}
        if ident.system:
            out["system"] = ident.system
        if ident.type_code:
            system = FR_V2_0203 if ident.type_code.startswith("INS") else V2_0203
            code = "INS-NIR" if ident.type_code == "INS" else ident.type_code
            out["type"] = {"coding": [{"system": system, "code": code}]}
        if ident.type_code == "PI":
            out["use"] = "usual"
        elif ident.type_code == "INS":
            out["use"] = "official"
        identifiers.append(out)
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "id": info.patient_id,
        "meta": {"versionId": str(version)},
        "identifier": identifiers,
        "active": replaced_by is None,
    }
    if info.family or info.given:
        name: dict[str, Any] = {"use": "official"}
        if info.family:
            name["family"] = info.family
        if info.given:
            name["given"] = [info.given]
        res["name"] = [name]
    if info.gender:
        res["gender"] = info.gender
    if info.birth_date:
        res["birthDate"] = info.birth_date
    if info.deceased_at is not None:
        res["deceasedDateTime"] = _iso(info.deceased_at)
    links = []
    if replaced_by:
        links.append({"other": {"reference": f"Patient/{replaced_by}"}, "type": "replaced-by"})
    links.extend({"other": {"reference": f"Patient/{old}"}, "type": "replaces"} for old in replaces)
    if links:
        res["link"] = links
    return res


# --- ACK ----------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _ack_table(fs: str, enc: str) -> dict[int, str]:
    """The characters that would break an ACK's structure (separators, segment ends) → space."""
    return {ord(ch): " " for ch in (fs, enc[0], enc[1], enc[2], enc[3], "\r", "\n")}


def ack_message(
    header: MessageHeader,
    code: str,
    now: datetime,
    control_id: str,
    rejection: Hl7Rejection | None = None,
    text: str = "",
) -> str:
    """The ACK (MSH, MSA, and ERR for AE/AR) answering `header`'s message, as text with `\\r`
    segment ends. Sender and receiver are swapped; MSA-2 echoes the message's control id."""
    fs = header.field_separator if header.field_separator not in ("", "\r", "\n") else "|"
    enc = header.encoding_characters if len(header.encoding_characters) >= 4 else "^~\\&"
    comp = enc[0]
    table = _ack_table(fs, enc)

    def clean(value: str) -> str:
        # Values echoed from a message must not break the ACK's own structure.
        return value.translate(table)[:199]

    trigger = clean(header.trigger)
    msh = fs.join(
        [
            "MSH",
            enc,
            "PARCOURS",
            "PARCOURS",
            clean(header.sending_application),
            clean(header.sending_facility),
            now.strftime("%Y%m%d%H%M%S%z"),
            "",
            f"ACK{comp}{trigger}{comp}ACK" if trigger else f"ACK{comp}{comp}ACK",
            clean(control_id),
            clean(header.processing_id) or "P",
            clean(header.version) if header.version in SUPPORTED_VERSIONS else "2.5",
        ]
    )
    if header.charset and header.charset.upper() in CHARSETS:
        msh += fs * 6 + clean(header.charset)
    msa_text = clean(rejection.summary if rejection else text)
    segments = [msh, fs.join(["MSA", code, clean(header.control_id), msa_text])]
    if rejection is not None:
        location = ""
        if rejection.segment:
            location = comp.join(
                [
                    rejection.segment,
                    "1",
                    str(rejection.field_no or ""),
                    "1" if rejection.field_no else "",
                    str(rejection.component or ""),
                ]
            ).rstrip(comp)
        segments.append(
            fs.join(
                [
                    "ERR",
                    "",
                    location,
                    f"{rejection.error_code}{comp}{clean(rejection.reason)}{comp}HL70357",
                    "E",
                    "",
                    "",
                    "",
                    clean(rejection.text),
                ]
            )
        )
    return "\r".join(segments) + "\r"
