"""The MLLP listener over TLS: handshake, an ACK, and a plain-text client refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ingest.mllp import AdtProcessor, MllpListener
from ingest.publish import Publisher
from parcours.broker import free_port
from parcours.db import make_engine, upgrade
from parcours.settings import Settings
from tests.hl7_messages import ack_code, adt, err_location

pytestmark = pytest.mark.integration


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_listener_answers_over_tls_and_drops_plain_text(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    db = f"sqlite:///{tmp_path / 'tls.db'}"
    upgrade(db)
    settings = Settings(
        database_url=db,
        # No broker: the message below is refused before anything would be published.
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        ingest_publish_timeout_s=1.0,
        mllp_senders=json.loads('{"gam-test": ["CHU21"]}'),
        mllp_tls_cert=cert,
        mllp_tls_key=key,
        mllp_parse_processes=0,
    )

    async def scenario() -> tuple[str, bytes]:
        engine = make_engine(db)
        publisher = Publisher(settings)
        listener = MllpListener(settings, AdtProcessor(engine, publisher))
        port = await listener.start("127.0.0.1", 0)
        try:
            client_ctx = ssl.create_default_context(cafile=str(cert))
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            writer.write(b"\x0b" + adt("A01", facility="INCONNU") + b"\x1c\r")
            await writer.drain()
            ack = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 30)
            writer.close()

            def plain() -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(b"\x0b" + adt("A01") + b"\x1c\r")
                    try:
                        return sock.recv(65536)
                    except OSError:
                        return b""

            answer = await asyncio.to_thread(plain)
            return ack.decode("latin-1"), answer
        finally:
            await listener.stop()
            await asyncio.to_thread(publisher.close)
            engine.dispose()

    ack, plain_answer = asyncio.run(scenario())
    assert ack_code(ack) == "AR", ack
    assert err_location(ack) == "MSH^1^4^1"
    # A client that does not speak TLS gets no ACK (the handshake fails and the socket closes).
    assert b"MSA|" not in plain_answer
