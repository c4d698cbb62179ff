"""One settings object per process, read once from the environment.

`KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` keep their usual names; everything else
uses the `PARCOURS_` prefix (for example `PARCOURS_DATA_DIR`, `PARCOURS_TOPIC_PREFIX`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
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
    worker_web_port: int = Field(default=6066, description="Faust worker web port; 0 disables.")
    worker_session_timeout_s: float = 10.0
    log_level: str = "INFO"

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
