"""PAM.fr-style HL7 v2.5 ADT messages for tests, written from the IHE PAM France profile:
MSH, EVN, PID (IPP and INS in PID-3), PV1 (class, PV1-3 point of care^room^bed^facility, NDA in
PV1-19), ZBE (movement id, time, action, original trigger, medical unit), and MRG for A40."""

from __future__ import annotations

import socket
from itertools import count

INS_OID = "1.2.250.1.213.1.4.8"
IPP_OID = "1.2.250.1.71.4.2.2"
_ids = count(1)

STRUCTURES = {
    "A01": "ADT_A01",
    "A04": "ADT_A01",
    "A05": "ADT_A05",
    "A02": "ADT_A02",
    "A03": "ADT_A03",
    "A06": "ADT_A06",
    "A07": "ADT_A06",
    "A08": "ADT_A01",
    "A11": "ADT_A09",
    "A12": "ADT_A12",
    "A13": "ADT_A01",
    "A21": "ADT_A21",
    "A22": "ADT_A21",
    "A52": "ADT_A52",
    "A53": "ADT_A52",
    "A38": "ADT_A38",
    "A40": "ADT_A39",
    "Z99": "ADT_A01",
}


def adt(
    trigger: str,
    *,
    ipp: str = "IPP001",
    nda: str = "NDA001",
    movement: str | None = "MVT1",
    action: str = "INSERT",
    at: str = "20260301100000",
    ward: str = "CARDIO",
    room: str = "101",
    bed: str = "1",
    facility: str = "CHU21",
    patient_class: str = "I",
    original: str = "",
    control_id: str | None = None,
    family: str = "MARTIN",
    given: str = "Élodie",
    ins: str | None = "2850475123456",
    charset: str = "UNICODE UTF-8",
    version: str = "2.5",
    merged_ipp: str = "IPP999",
    discharge_mode: str = "",
    extra_segments: str = "",
    message_type: str = "ADT",
    service: str = "",
) -> bytes:
    """One ADT message; `movement=None` leaves ZBE out (international IHE PAM)."""
    cid = control_id or f"MSG{next(_ids):06d}"
    structure = STRUCTURES.get(trigger, "ADT_A01")
    pid3 = f"{ipp}^^^{facility}&{IPP_OID}&ISO^PI"
    if ins:
        pid3 += f"~{ins}^^^ASIP-SANTE-INS-NIR&{INS_OID}&ISO^INS"
    segments = [
        f"MSH|^~\\&|GAM|{facility}|PARCOURS|ARS|{at}||{message_type}^{trigger}^{structure}|{cid}|P|{version}|||||FRA|{charset}||",
        f"EVN||{at}||||{at}|{facility}",
        f"PID|||{pid3}||{family}^{given}^^^^^L||19850412|F|||3 rue de la Liberté^^Dijon^^21000^FRA",
    ]
    if trigger == "A40":
        segments.append(f"MRG|{merged_ipp}^^^{facility}&{IPP_OID}&ISO^PI")
    else:
        location = f"{ward}^{room}^{bed}^{facility}" if ward else ""
        pv1 = (
            ["PV1", "", patient_class, location]
            + [""] * 15
            + [f"{nda}^^^{facility}&1.2.250.1.71.4.2.2&ISO^AN"]
        )
        pv1[10] = service
        segments.append("|".join(pv1))
        if movement is not None:
            segments.append(
                f"ZBE|{movement}^{facility}|{at}||{action}|N|{original}|^^^^^^UF^^^{ward}||HMS"
            )
        if discharge_mode:
            segments.append(f"ZFM|||{discharge_mode}")
    text = "\r".join(segments) + "\r" + extra_segments
    codec = {"8859/1": "latin-1", "UNICODE UTF-8": "utf-8"}.get(charset, "utf-8")
    return text.encode(codec)


class MllpClient:
    """A blocking MLLP client: send one message, read its ACK."""

    def __init__(self, host: str, port: int, timeout_s: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (framing included or not)."""
        self.sock.sendall(data)

    def read_ack(self) -> str:
        """The next ACK block's text."""
        while b"\x1c\r" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before an ACK")
            self.buffer += chunk
        block, self.buffer = self.buffer.split(b"\x1c\r", 1)
        start = block.find(b"\x0b")
        return block[start + 1 :].decode("latin-1")

    def send(self, payload: bytes) -> str:
        """Send one framed message and return its ACK."""
        self.sock.sendall(b"\x0b" + payload + b"\x1c\r")
        return self.read_ack()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def ack_code(ack: str) -> str:
    """MSA-1 of an ACK."""
    for seg in ack.split("\r"):
        if seg.startswith("MSA|"):
            return seg.split("|")[1]
    return ""


def err_location(ack: str) -> str:
    """ERR-2 of an ACK ('' when there is no ERR)."""
    for seg in ack.split("\r"):
        if seg.startswith("ERR|"):
            return seg.split("|")[2]
    return ""
