"""One settings object per process, read once from the environment.

`KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` keep their usual names; everything else
uses the `PARCOURS_` prefix (for example `PARCOURS_DATA_DIR`, `PARCOURS_TOPIC_PREFIX`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Process-wide configuration. Build it once in the entry point and pass it down."""

    model_config = SettingsConfigDict(env_prefix="PARCOURS_", extra="ignore")

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP_SERVERS", "PARCOURS_KAFKA_BOOTSTRAP_SERVERS"
        ),
        description="host:port[,host:port]; unset means the demo starts an embedded broker.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "PARCOURS_DATABASE_URL"),
        description="SQLAlchemy URL; unset means an SQLite file in the data folder.",
    )
    data_dir: Path = Field(default=Path("data"), description="Demo data (SQLite file, logs).")
    broker_host: str = "127.0.0.1"
    broker_port: int = 9092
    topic_prefix: str = Field(
        default="", description="Prepended to every topic and group name (tests, tenants)."
    )
    topic_partitions: int = 4
    topic_replication_factor: int = Field(
        default=1,
        ge=1,
        description="Replicas of each topic Parcours creates (3 on a three-broker Kafka).",
    )
    worker_web_port: int = Field(default=6066, description="Faust worker web port; 0 disables.")
    worker_session_timeout_s: float = 10.0
    log_level: str = "INFO"
    timezone: str = Field(
        default="Europe/Paris", description="Time zone in which people read times (dashboard)."
    )
    dashboard_host: str = Field(default="127.0.0.1", description="Address the dashboard serves on.")
    dashboard_port: int = Field(default=8501, description="Port of the Streamlit dashboard.")
    # Ingest gateway (issue 3).
    ingest_host: str = Field(
        default="127.0.0.1", description="Address the FHIR gateway listens on."
    )
    ingest_port: int = Field(default=8080, description="Port of the FHIR gateway.")
    ingest_max_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        description="Largest request body the gateway accepts (413 above).",
    )
    ingest_max_resource_bytes: int = Field(
        default=4 * 1024 * 1024 - 64 * 1024,
        description="Largest single resource (compact JSON) the gateway publishes (413 above); "
        "the Kafka producer's max_request_size, and the broker's message.max.bytes, must "
        "allow it plus 64 KiB.",
    )
    ingest_body_timeout_s: float = Field(
        default=10.0,
        description="Longest wait for the next part of a request body (408 after it).",
    )
    ingest_keepalive_timeout_s: float = Field(
        default=5.0, description="Idle HTTP keep-alive connections are closed after this."
    )
    ingest_db_timeout_s: float = Field(
        default=3.0,
        description="Gateway database connect and statement timeout (503 after it).",
    )
    ingest_rate_per_s: float = Field(
        default=100.0,
        description="Requests per second each integrator may send on average (429 above); "
        "0 disables the limit.",
    )
    ingest_rate_burst: int = Field(
        default=200, description="Requests an integrator may send at once above its rate."
    )
    ingest_ownership: bool = Field(
        default=True,
        description="Each patient, and each resource of no patient, belongs to the integrator "
        "that first wrote it (403 for others unless granted with `parcours ingest grant`).",
    )
    ingest_publish_timeout_s: float = Field(
        default=10.0, description="How long the gateway waits for Kafka acks before answering 503."
    )
    ingest_url: str = Field(
        default="http://127.0.0.1:8080",
        description="Gateway base URL used by `parcours ingest push`.",
    )
    ingest_token: SecretStr | None = Field(
        default=None, description="Bearer token `parcours ingest push` sends to the gateway."
    )
    # --- HL7 v2 ADT listener over MLLP (ingest/mllp.py) ---
    mllp_host: str = Field(default="127.0.0.1", description="Address the MLLP listener binds.")
    mllp_port: int = Field(default=2575, description="Port of the MLLP listener.")
    mllp_senders: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Integrator → the sending facilities (MSH-4) it may send, JSON, e.g. "
        '{"gam-chu21": ["CHU21"]}. A message from any other facility is refused (AR).',
    )
    mllp_max_message_bytes: int = Field(
        default=1024 * 1024, description="Largest MLLP message accepted (AE above)."
    )
    mllp_frame_timeout_s: float = Field(
        default=30.0, description="Time a sender has to finish a message it started."
    )
    mllp_idle_timeout_s: float = Field(
        default=600.0, description="A connection silent this long is closed."
    )
    mllp_max_connections: int = Field(default=64, description="Concurrent MLLP connections.")
    mllp_evict_idle_s: float = Field(
        default=5.0,
        description="When every connection is taken, a new one closes the connection idle "
        "longest (no message being read, no ACK owed) if it has been idle this long.",
    )
    mllp_locations: bool = Field(
        default=True,
        description="Publish the Location hierarchy PV1-3 names; turn off when the "
        "establishment's Locations (with the same ids) come from the FHIR directory.",
    )
    mllp_parse_processes: int = Field(
        default=1,
        description="Processes that parse HL7 beside the listener (0: parse in the listener).",
    )
    mllp_tls_cert: Path | None = Field(
        default=None, description="PEM certificate: set it (and the key) to listen with TLS."
    )
    mllp_tls_key: Path | None = Field(default=None, description="PEM private key for TLS.")
    mllp_tls_client_ca: Path | None = Field(
        default=None, description="CA bundle: when set, clients must present a certificate."
    )
    ingest_defer_unresolved: bool = Field(
        default=False,
        description="Accept a conditional reference (`Location?identifier=system|value`) that "
        "matches nothing yet, and resolve it when its target arrives (feeds that send patients "
        "before the hospital Bundle); off, such a reference fails its entry (its whole "
        "transaction).",
    )
    # --- Stream worker and pathway rules (streams/) ---
    streams_app_id: str = Field(
        default="",
        description="Faust app id (consumer group, table changelogs); empty means "
        "`<topic prefix>parcours-streams`. A new id replays the raw topic from the start.",
    )
    worker_batch_size: int = Field(
        default=20000,
        description="Most raw messages the worker folds into one SQL transaction: a backlog is "
        "read in batches this large, a live feed's batch holds what came in meanwhile.",
    )
    worker_batch_within_s: float = Field(
        default=0.25,
        description="Longest wait (seconds) to fill a batch before processing it, when the "
        "worker is free to take it; while it still folds the previous batch, the batch fills on.",
    )
    worker_fold_processes: int = Field(
        default=2,
        ge=0,
        description="Child processes of the worker that run the pathway rules of a batch, each "
        "for its share of the partitions, beside the SQL write of the previous batch; 0 runs "
        "them in a thread of the worker.",
    )
    worker_progress_interval_s: float = Field(
        default=5.0,
        description="Period (seconds) of the worker's progress report to SQL (`stream_progress`, "
        "shown on the Feed health page); 0 disables.",
    )
    alert_ed_boarding_hours: float = Field(
        default=4.0, description="ED stay (hours) after which an ED-boarding alert is raised."
    )
    alert_referral_days: float = Field(
        default=14.0, description="Days a community referral may wait for a hospital contact."
    )
    alert_followup_days: float = Field(
        default=7.0, description="Days after discharge within which a follow-up is expected."
    )
    alert_readmission_days: float = Field(
        default=30.0, description="An admission this many days after a discharge is a readmission."
    )
    alert_los_p90_days: dict[str, float] = Field(
        default_factory=dict,
        description="90th percentile length of stay (days) per service code or ward id; a longer "
        'open stay raises a long-stay alert (JSON, e.g. {"cardio": 9, "geriatrie": 21}).',
    )
    alert_los_p90_default_days: float = Field(
        default=12.0, description="Long-stay threshold (days) for services not listed above."
    )
    pathway_timer_interval_s: float = Field(
        default=60.0,
        description=(
            "Wall-clock period of the pathway timer checks (no-follow-up, boarding); 0 disables."
        ),
    )
    census_capacity: dict[str, int] = Field(
        default_factory=dict,
        description="Territory config: capacity per ward/service/hospital id, overriding the count "
        'of active beds (JSON, e.g. {"ward-cardio": 24}).',
    )
    census_horizon_days: float = Field(
        default=30.0,
        gt=0,
        description="Days past the clock up to which the census counts hours: a time further "
        "on (a feed's mistake) would have every open stay counted hour by hour up to it.",
    )
    census_lookback_days: float = Field(
        default=730.0,
        gt=0,
        description="Days before the clock from which the census counts a stay or ED visit that "
        "began earlier and is still open, or ended since: one from 1901 (a feed's mistake) would "
        "be counted hour by hour since. Older stays that ended before then are counted whole.",
    )

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap servers, defaulting to the embedded broker's address."""
        return self.kafka_bootstrap_servers or f"{self.broker_host}:{self.broker_port}"

    @property
    def db_url(self) -> str:
        """The database URL, defaulting to the demo's SQLite file."""
        if self.database_url:
            return normalise_db_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'parcours.db').resolve()}"


def normalise_db_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2 and accept libpq-style `postgres://` ones.

    SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3; Parcours ships psycopg2.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url.removeprefix(prefix)
    return url
