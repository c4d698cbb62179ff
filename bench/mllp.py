"""`parcours bench mllp`: HL7 v2 ADT messages per second acknowledged end to end over MLLP.

End to end means: framed on a socket, parsed (python-hl7), checked, applied to the stay's history,
converted to FHIR, published to the raw topic and acknowledged by Kafka (acks=all), stored in SQL,
and answered AA. The peer, measured in the same run on the same messages, is a bare `hl7.parse`
loop in one process: the listener cannot go faster than parsing, so the ratio shows what the rest
costs on top.

Setup: `--stays` synthetic PAM.fr stays of four messages each (A01, two A02, A03, with ZBE) for
distinct patients, sent over 4 connections (each stay's messages in order on one connection); a
fresh embedded broker, a fresh SQLite file (or `--database-url`, which must hold none of these
stays), and one `parcours ingest mllp` process. `--window 1` makes each sender wait for every ACK
before its next message (the classic MLLP sender); a larger window lets it send ahead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import hl7

from bench import rate_table
from bench.ingest import group_cpu_seconds

FACILITY = "CHUBENCH"
WARDS = ("CARDIO", "NEURO", "PNEUMO", "GERIA", "CHIR", "MEDINT")


@dataclass
class MllpBench:
    """Figures of one run."""

    messages: int
    connections: int
    window: int
    parse_rate: float
    mllp_rate: float
    acked: int
    nacked: int
    latency_p50_ms: float
    latency_p95_ms: float
    listener_per_cpu_s: float
    parse_per_cpu_s: float
    parse_processes: int

    @property
    def ratio(self) -> float:
        """End-to-end rate over the bare parse rate."""
        return self.mllp_rate / self.parse_rate if self.parse_rate else 0.0


def _ts(minutes: int) -> str:
    day, rest = divmod(minutes, 24 * 60)
    return f"202603{1 + day % 28:02d}{rest // 60:02d}{rest % 60:02d}00"


def adt_messages(stays: int, run: str) -> list[list[bytes]]:
    """Per stay, its four PAM.fr messages (A01, A02, A02, A03), as a French ADT feed sends them."""
    out = []
    for i in range(stays):
        ipp, nda = f"B{run}{i:06d}", f"V{run}{i:06d}"
        msgs = []
        steps = [
            ("A01", "ADT_A01", 0),
            ("A02", "ADT_A02", 600),
            ("A02", "ADT_A02", 2000),
            ("A03", "ADT_A03", 4000),
        ]
        for n, (trigger, structure, offset) in enumerate(steps):
            at = _ts(i % 5000 + offset)
            ward = WARDS[(i + n) % len(WARDS)]
            segments = [
                f"MSH|^~\\&|GAM|{FACILITY}|PARCOURS|ARS|{at}||ADT^{trigger}^{structure}|"
                f"{nda}-{n}|P|2.5|||||FRA|8859/1",
                f"EVN||{at}||||{at}",
                f"PID|||{ipp}^^^{FACILITY}&1.2.250.1.71.4.2.2&ISO^PI~1{i:012d}^^^ASIP-SANTE-INS-NIR"
                f"&1.2.250.1.213.1.4.8&ISO^INS||NOM{i}^Prénom^^^^^L||19500101|F",
                f"PV1||I|{ward}^{100 + i % 30}^{1 + i % 2}^{FACILITY}||||||||||||||||"
                f"{nda}^^^{FACILITY}&1.2.250.1.71.4.2.2&ISO^AN",
                f"ZBE|{nda}-M{n}^{FACILITY}|{at}||INSERT|N||^^^^^^UF^^^{ward}||HMS",
            ]
            msgs.append(("\r".join(segments) + "\r").encode("latin-1"))
        out.append(msgs)
    return out


def parse_rate(messages: list[bytes]) -> tuple[float, float]:
    """Messages `hl7.parse` reads per second (wall clock, CPU) in a bare loop."""
    texts = [m.decode("latin-1") for m in messages]
    started, cpu = time.perf_counter(), time.process_time()
    for text in texts:
        hl7.parse(text)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return len(texts) / wall, len(texts) / cpu


def _send_all(
    port: int, messages: list[bytes], window: int, latencies: list[float], codes: list[str]
) -> None:
    """Send `messages` on one connection, at most `window` unanswered; record each ACK."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    buffer = b""
    sent: list[float] = []
    answered = 0
    try:
        i = 0
        while answered < len(messages):
            while i < len(messages) and i - answered < window:
                sock.sendall(b"\x0b" + messages[i] + b"\x1c\r")
                sent.append(time.perf_counter())
                i += 1
            while b"\x1c\r" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the listener closed the connection")
                buffer += chunk
            while b"\x1c\r" in buffer:
                block, buffer = buffer.split(b"\x1c\r", 1)
                latencies.append(time.perf_counter() - sent[answered])
                msa = [s for s in block.split(b"\r") if s.startswith(b"MSA|")]
                codes.append(msa[0].split(b"|")[1].decode() if msa else "?")
                answered += 1
    finally:
        sock.close()


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the MLLP listener exited during startup")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the MLLP listener did not start")


def run(
    stays: int,
    connections: int,
    window: int,
    database_url: str | None,
    parse_processes: int | None = None,
) -> MllpBench:
    """Measure both rates on the same messages."""
    from parcours.broker import EmbeddedBroker, free_port
    from parcours.db import upgrade

    run_id = f"{os.getpid() % 10000:04d}"
    per_stay = adt_messages(stays, run_id)
    flat = [m for msgs in per_stay for m in msgs]
    # The peer is measured before and after the run and averaged, so that a change in the
    # machine's load weighs on both figures alike.
    peer_before, peer_cpu_before = parse_rate(flat)
    lanes: list[list[bytes]] = [[] for _ in range(connections)]
    for i, msgs in enumerate(per_stay):
        lanes[i % connections].extend(msgs)

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=free_port()) as broker:
        db_url = database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(db_url)
        port = free_port()
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
            DATABASE_URL=db_url,
            PARCOURS_TOPIC_PREFIX=f"bench{os.getpid()}.",
            PARCOURS_LOG_LEVEL="WARNING",
            PARCOURS_MLLP_SENDERS=json.dumps({"bench": [FACILITY]}),
        )
        if parse_processes is not None:
            env["PARCOURS_MLLP_PARSE_PROCESSES"] = str(parse_processes)
        log = open(Path(tmp) / "mllp.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "parcours", "ingest", "mllp", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_port(port, proc)
            # One stay first: the producer connects and the topics exist before the clock runs.
            warm: list[str] = []
            _send_all(port, per_stay[0], 1, [], warm)
            lanes[0] = lanes[0][len(per_stay[0]) :]
            latencies: list[float] = []
            codes: list[str] = []
            errors: list[BaseException] = []

            def lane(msgs: list[bytes]) -> None:
                try:
                    _send_all(port, msgs, window, latencies, codes)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=lane, args=(msgs,)) for msgs in lanes]
            cpu_before = group_cpu_seconds(proc.pid)
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
            listener_cpu = group_cpu_seconds(proc.pid) - cpu_before
            if errors:
                raise RuntimeError(f"a sender failed: {errors[0]}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            log.close()
    peer_after, peer_cpu_after = parse_rate(flat)
    sent = len(codes)
    ordered = sorted(latencies)
    return MllpBench(
        messages=sent,
        connections=connections,
        window=window,
        parse_rate=(peer_before + peer_after) / 2,
        mllp_rate=sent / wall,
        acked=codes.count("AA"),
        nacked=sent - codes.count("AA"),
        latency_p50_ms=statistics.median(ordered) * 1000,
        latency_p95_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000,
        listener_per_cpu_s=sent / listener_cpu if listener_cpu else 0.0,
        parse_per_cpu_s=(peer_cpu_before + peer_cpu_after) / 2,
        parse_processes=int(env.get("PARCOURS_MLLP_PARSE_PROCESSES", "1")),
    )


def report(b: MllpBench) -> str:
    """The table and one-line summary `parcours bench mllp` prints."""
    rows = [
        (
            "bare hl7.parse loop, in process, one core (peer)",
            f"{b.parse_rate:,.0f}",
            "mean of a run before and one after the MLLP run",
        ),
        (
            f"MLLP end to end (AA after Kafka acks), {b.connections} connections, "
            f"window {b.window}, {b.parse_processes} parse process(es)",
            f"{b.mllp_rate:,.0f}",
            f"p50 {b.latency_p50_ms:.1f} ms, p95 {b.latency_p95_ms:.1f} ms per message",
        ),
        (
            "per CPU second: peer process / listener processes",
            f"{b.parse_per_cpu_s:,.0f} / {b.listener_per_cpu_s:,.0f}",
            f"= {b.listener_per_cpu_s / b.parse_per_cpu_s:.0%} (listener CPU time only)"
            if b.parse_per_cpu_s
            else "",
        ),
    ]
    lines = rate_table(rows, "messages/s")
    lines.append(
        f"{b.messages} ADT messages (A01, A02, A02, A03 per stay): {b.acked} AA, {b.nacked} other"
    )
    verdict = "meets" if b.ratio >= 0.5 else "misses"
    lines.append(
        f"mllp: {b.mllp_rate:,.0f} ADT messages/s acknowledged end to end = "
        f"{b.ratio:.0%} of a bare "
        f"hl7.parse loop ({b.parse_rate:,.0f}/s); {verdict} the 50 % goal"
    )
    return "\n".join(lines)
