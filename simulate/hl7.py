"""`parcours simulate --hl7 HOSPITAL`: one hospital's movements as PAM.fr ADT over MLLP.

The simulator writes every stay as successive FHIR Encounter versions. For the chosen hospital's
ED visits and inpatient stays this sink sends, instead, the HL7 v2.5 messages its patient
administration system would have sent: A04 (PV1-2 E) for an ED arrival, A01 for an admission,
A02 for each later move, A03 for a discharge or an ED departure, A11 (ZBE-4 CANCEL) when a stay is
withdrawn, each with a ZBE movement id. PID-3 carries the patient id as IPP and the INS, PV1-3 the
ward and bed (ids as the FHIR directory gives them), PV1-19 the stay id. Everything else goes to
the inner sink as FHIR.

With a history (`--history-until`), the history goes to its own sink as FHIR, the hospital's stays
included; `Hl7Sink.observe(history_sink)` notes which stays and patients it carried. A stay the
history began goes on as FHIR until it ends, so that one stay's versions never come from two
numberings (the listener numbers its own); stays that begin live go as ADT. The patients the
history introduced keep their names and INS in PID.

`adt_for_version` is pure; `Hl7Sink` holds the sent-so-far per stay and the MLLP connection.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from simulate import SimulationError
from simulate.sinks import Sink

log = logging.getLogger(__name__)

INS_OID = "1.2.250.1.213.1.4.8"
FINESS_OID = "1.2.250.1.71.4.2.2"
# discharge-disposition → PAM.fr ZFM-3 (mode de sortie PMSI).
ZFM_MODE = {"home": "8", "exp": "9", "other-hcf": "7", "rehab": "7", "hosp": "7", "aadvice": "8"}
WINDOW = 32
_BED = re.compile(r"^(?P<ward>.+)-(?P<bed>b\d{3})$")


@dataclass
class StaySent:
    """What was already sent for one stay."""

    version: int = 0
    moves: int = 0
    started: bool = False
    ended: bool = False
    cancelled: bool = False


@dataclass
class PatientInfo:
    """PID values, from the Patient resources the simulator sends."""

    ins: str = ""
    family: str = ""
    given: str = ""
    birth: str = ""
    gender: str = ""


@dataclass
class Converter:
    """Encounter versions of one hospital → ADT messages (pure apart from its memory)."""

    hospital: str
    tz: ZoneInfo
    stays: dict[str, StaySent] = field(default_factory=dict)
    patients: dict[str, PatientInfo] = field(default_factory=dict)
    # Stays of this hospital the history sent as FHIR: they stay FHIR.
    fhir_stays: set[str] = field(default_factory=set)
    seq: int = 0

    def wants(self, resource: dict[str, Any]) -> bool:
        """True for an ED visit or inpatient stay of this hospital."""
        return (
            resource.get("resourceType") == "Encounter"
            and (resource.get("serviceProvider") or {}).get("reference")
            == f"Organization/{self.hospital}"
            and (resource.get("class") or {}).get("code") in ("EMER", "IMP")
        )

    def remember_patient(self, resource: dict[str, Any]) -> None:
        """Keep what PID needs from a Patient resource."""
        ins = next(
            (
                i.get("value", "")
                for i in resource.get("identifier") or []
                if INS_OID in i.get("system", "")
            ),
            "",
        )
        name = (resource.get("name") or [{}])[0]
        self.patients[str(resource.get("id"))] = PatientInfo(
            ins=ins,
            family=name.get("family", ""),
            given=(name.get("given") or [""])[0],
            birth=str(resource.get("birthDate", "")).replace("-", ""),
            gender={"male": "M", "female": "F"}.get(resource.get("gender", ""), "U"),
        )

    def _ts(self, text: str) -> str:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return at.astimezone(self.tz).strftime("%Y%m%d%H%M%S")

    def _place(self, ref: str) -> str:
        loc = ref.removeprefix("Location/")
        found = _BED.match(loc)
        ward, bed = (found["ward"], found["bed"]) if found else (loc, "")
        point_of_care = ward.removeprefix(f"{self.hospital}-")
        return f"{point_of_care}^^{bed}^{self.hospital}&{FINESS_OID}&ISO"

    def _message(
        self,
        trigger: str,
        enc: dict[str, Any],
        at: str,
        movement: str,
        place: str,
        action: str = "INSERT",
        original: str = "",
        discharge: str = "",
    ) -> bytes:
        self.seq += 1
        patient = enc["subject"]["reference"].removeprefix("Patient/")
        info = self.patients.get(patient, PatientInfo())
        pid3 = f"{patient}^^^{self.hospital}&{FINESS_OID}&ISO^PI"
        if info.ins:
            pid3 += f"~{info.ins}^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^INS"
        patient_class = "E" if enc["class"]["code"] == "EMER" else "I"
        structure = {"A01": "ADT_A01", "A04": "ADT_A01", "A02": "ADT_A02", "A03": "ADT_A03"}.get(
            trigger, "ADT_A09"
        )
        segments = [
            f"MSH|^~\\&|SIMGAM|{self.hospital}|PARCOURS|ARS|{at}||ADT^{trigger}^{structure}|"
            f"SIM{self.seq:09d}|P|2.5|||||FRA|UNICODE UTF-8",
            f"EVN||{at}||||{at}",
            f"PID|||{pid3}||{info.family}^{info.given}^^^^^L||{info.birth}|{info.gender}",
            f"PV1||{patient_class}|{place}||||||||||||||||{enc['id']}^^^{self.hospital}&{FINESS_OID}&ISO^AN",
            f"ZBE|{movement}^{self.hospital}|{at}||{action}|N|{original}||",
        ]
        if discharge:
            segments.append(f"ZFM|||{discharge}")
        return ("\r".join(segments) + "\r").encode("utf-8")

    def adt_for_version(self, enc: dict[str, Any]) -> list[bytes]:
        """The messages that take the hospital's system from what it sent to this version."""
        sent = self.stays.setdefault(enc["id"], StaySent())
        version = int((enc.get("meta") or {}).get("versionId") or 0)
        if version and version <= sent.version:
            return []  # a repeat or an older version: the hospital's system said it already
        sent.version = version
        out: list[bytes] = []
        moves = [
            e
            for e in enc.get("location") or []
            if e.get("status") in ("active", "completed") and (e.get("period") or {}).get("start")
        ]
        first_place = (
            self._place(moves[0]["location"]["reference"]) if moves else f"^^^{self.hospital}"
        )
        admit = "A04" if enc["class"]["code"] == "EMER" else "A01"
        if enc.get("status") in ("cancelled", "entered-in-error"):
            if sent.started and not sent.cancelled:
                sent.cancelled = True
                at = self._ts(enc["period"]["start"])
                out.append(
                    self._message("A11", enc, at, f"{enc['id']}-m1", first_place, "CANCEL", admit)
                )
            return out
        if not sent.started and enc.get("period", {}).get("start"):
            sent.started = True
            sent.moves = max(sent.moves, 1)
            out.append(
                self._message(
                    admit, enc, self._ts(enc["period"]["start"]), f"{enc['id']}-m1", first_place
                )
            )
        if admit == "A01":
            for n in range(sent.moves, len(moves)):
                move = moves[n]
                out.append(
                    self._message(
                        "A02",
                        enc,
                        self._ts(move["period"]["start"]),
                        f"{enc['id']}-m{n + 1}",
                        self._place(move["location"]["reference"]),
                    )
                )
            sent.moves = max(sent.moves, len(moves))
        if (
            enc.get("status") == "finished"
            and not sent.ended
            and (enc.get("period") or {}).get("end")
        ):
            sent.ended = True
            disposition = next(
                (
                    c.get("code", "")
                    for c in (
                        (enc.get("hospitalization") or {}).get("dischargeDisposition") or {}
                    ).get("coding")
                    or []
                ),
                "",
            )
            last = self._place(moves[-1]["location"]["reference"]) if moves else first_place
            out.append(
                self._message(
                    "A03",
                    enc,
                    self._ts(enc["period"]["end"]),
                    f"{enc['id']}-d",
                    last,
                    discharge=ZFM_MODE.get(disposition, ""),
                )
            )
        return out


class MllpSender:
    """A blocking MLLP client that sends ahead up to WINDOW messages and counts the ACKs."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        self.address = (host, port)
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.unacked = 0
        self.acks: Counter[str] = Counter()

    def _connect(self) -> socket.socket:
        if self.sock is None:
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    self.sock = socket.create_connection(self.address, timeout=self.timeout_s)
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise SimulationError(
                            f"MLLP listener at {self.address} unreachable: {exc}"
                        ) from exc
                    time.sleep(0.5)
        return self.sock

    def _read_one(self) -> None:
        sock = self._connect()
        while b"\x1c\r" not in self.buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise SimulationError("the MLLP listener closed the connection")
            self.buffer += chunk
        block, self.buffer = self.buffer.split(b"\x1c\r", 1)
        msa = [s for s in block.split(b"\r") if s.startswith(b"MSA|")]
        code = msa[0].split(b"|")[1].decode() if msa else "?"
        self.acks[code] += 1
        if code != "AA":
            log.warning("ADT refused (%s): %s", code, block[-300:].decode("utf-8", "replace"))
        self.unacked -= 1

    def send(self, payload: bytes) -> None:
        """Send one message (waiting for older ACKs once WINDOW are unanswered)."""
        while self.unacked >= WINDOW:
            self._read_one()
        self._connect().sendall(b"\x0b" + payload + b"\x1c\r")
        self.unacked += 1

    def drain(self) -> None:
        """Wait for every outstanding ACK."""
        while self.unacked > 0:
            self._read_one()

    def close(self) -> None:
        """Drain and close the connection."""
        if self.sock is not None:
            self.drain()
            self.sock.close()
            self.sock = None


class Hl7Sink:
    """Sends `hospital`'s stays as ADT over MLLP and everything else to `inner`."""

    def __init__(self, inner: Sink, hospital: str, host: str, port: int, timezone: str) -> None:
        self.inner = inner
        self.converter = Converter(hospital, ZoneInfo(timezone))
        self.sender = MllpSender(host, port)
        self.messages = 0
        # Patients sent to `inner` that it may still hold in its buffer (the gateway's batches).
        self.unflushed_patients: set[str] = set()

    def observe(self, history_sink: Sink) -> HistoryObserver:
        """`history_sink`, noting the hospital's stays and the patients the history sends."""
        return HistoryObserver(history_sink, self.converter)

    def send(self, resource: dict[str, Any], valid: bool) -> None:
        """An ED visit or stay of the hospital begun live → ADT; anything else → the inner
        sink."""
        if resource.get("resourceType") == "Patient":
            self.converter.remember_patient(resource)
            self.unflushed_patients.add(str(resource.get("id")))
        if (
            valid
            and self.converter.wants(resource)
            and resource.get("id") not in self.converter.fhir_stays
        ):
            patient = str(resource["subject"]["reference"]).removeprefix("Patient/")
            if patient in self.unflushed_patients:
                # The listener records the patient of an ADT as this integrator's version 1: the
                # FHIR Patient must reach the gateway first, or the gateway refuses it (409).
                self.flush_inner()
            for message in self.converter.adt_for_version(resource):
                self.sender.send(message)
                self.messages += 1
            return
        self.inner.send(resource, valid)

    def flush_inner(self) -> None:
        """Push out what the inner sink holds."""
        self.inner.flush()
        self.unflushed_patients.clear()

    def flush(self) -> None:
        """Flush the inner sink and wait for the outstanding ACKs."""
        self.flush_inner()
        self.sender.drain()

    def close(self) -> None:
        """Close both."""
        try:
            self.sender.close()
        finally:
            self.inner.close()

    def summary(self) -> dict[str, int]:
        """The inner sink's counts, plus ADT messages sent and their ACK codes."""
        out = dict(self.inner.summary())
        out["hl7_messages"] = self.messages
        out.update({f"hl7_ack_{code}": n for code, n in self.sender.acks.items()})
        return out


class HistoryObserver:
    """The history's sink, unchanged, noting for `Hl7Sink` the hospital's stays it carried (they
    go on as FHIR) and the patients it introduced (for PID)."""

    def __init__(self, inner: Sink, converter: Converter) -> None:
        self.inner = inner
        self.converter = converter

    def send(self, resource: dict[str, Any], valid: bool) -> None:
        """Note, then pass on."""
        if resource.get("resourceType") == "Patient":
            self.converter.remember_patient(resource)
        elif self.converter.wants(resource):
            self.converter.fhir_stays.add(str(resource.get("id")))
        self.inner.send(resource, valid)

    def flush(self) -> None:
        """Flush the history's sink."""
        self.inner.flush()

    def close(self) -> None:
        """Close the history's sink."""
        self.inner.close()

    def summary(self) -> dict[str, int]:
        """The history's sink's counts."""
        return self.inner.summary()
