"""Broker and database agree on which topic the data came from.

The SQL tables (pathways, census, the gateway's dedupe log…) are built from the records of one raw
topic. A broker that lost its data (the embedded broker keeps it in memory; a Kafka volume
deleted; a topic recreated) hands out a new, empty topic under the same name. Folding new records
on top of the old tables would count every patient twice, and the dedupe log would answer
"duplicate" for resources the new topic never received.

So the SQL database stores the identity of the raw topic its data belong to (Kafka topic id and
cluster id, table `topic_identity`), and the stream worker and the gateway check it when they
start (`check_topic_identity`). A mismatch stops them with a message that says what to do;
`parcours demo` resolves it itself (clean start, or `--keep` to replay its simulated history).
`reset_data` empties the data tables, the dedupe log included, and adopts the new topic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from sqlalchemy import Engine, MetaData, delete, inspect, select, text, update
from sqlalchemy.exc import OperationalError

from parcours import ParcoursError
from parcours.db import upsert
from parcours.db.identity_models import TopicIdentityRow
from parcours.settings import Settings
from parcours.timeutil import to_utc
from parcours.topics import Topics, ensure_topics

log = logging.getLogger(__name__)

# Tables that describe no topic's records: the schema version, the integrators, their tokens,
# what each owns and was granted (who may write, as the admin set it), and the identity itself.
NOT_DATA = frozenset(
    {"alembic_version", "integrators", "ingest_owners", "ingest_grants", "topic_identity"}
)
_NO_TOPIC_ID = {"", "AAAAAAAAAAAAAAAAAAAAAA", "00000000-0000-0000-0000-000000000000"}


class TopicIdentityError(ParcoursError):
    """The broker's topic is not the one the SQL data were built from."""


@dataclass(frozen=True)
class TopicIdentity:
    """A topic as the broker describes it: its name, topic id and cluster id."""

    topic: str
    topic_id: str
    cluster_id: str

    def short(self) -> str:
        """`id …, cluster …`, for messages."""
        return f"id {self.topic_id}, cluster {self.cluster_id}"


def broker_identity(bootstrap: str, topic: str, timeout_s: float = 10.0) -> TopicIdentity | None:
    """The identity of `topic` on the broker, or None if the topic does not exist or the broker
    gives no topic id (Kafka before 2.8)."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="parcours-identity",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        described = admin.describe_topics([topic])
        cluster = admin.describe_cluster()
    finally:
        admin.close()
    if not described or described[0].get("error_code"):
        return None
    topic_id = str(described[0].get("topic_id") or "")
    if topic_id in _NO_TOPIC_ID:
        return None
    return TopicIdentity(topic, topic_id, str(cluster.get("cluster_id") or ""))


def recorded_identity(engine: Engine, topic: str) -> tuple[TopicIdentity, datetime] | None:
    """The identity SQL holds for `topic`, with when it was recorded; None if none is."""
    t = TopicIdentityRow.__table__
    with engine.connect() as conn:
        row = conn.execute(
            select(t.c.topic_id, t.c.cluster_id, t.c.recorded_at).where(t.c.topic == topic)
        ).first()
    if row is None:
        return None
    at = to_utc(row.recorded_at)
    return TopicIdentity(topic, row.topic_id, row.cluster_id), at


def record_identity(engine: Engine, identity: TopicIdentity, *, replace: bool = False) -> None:
    """Store `identity` as the topic the SQL data belong to. Without `replace`, an identity
    already recorded (by a process that started at the same time) is kept."""
    row = {
        "topic": identity.topic,
        "topic_id": identity.topic_id,
        "cluster_id": identity.cluster_id,
        "recorded_at": datetime.now(UTC),
    }
    with engine.begin() as conn:
        upsert(
            conn,
            TopicIdentityRow,
            [row],
            key=["topic"],
            update=["topic_id", "cluster_id", "recorded_at"] if replace else [],
        )


def data_tables(engine: Engine) -> list[str]:
    """Every table that holds data derived from a topic's records."""
    return sorted(n for n in inspect(engine).get_table_names() if n not in NOT_DATA)


def holds_data(engine: Engine) -> bool:
    """Whether any data table has a row."""
    with engine.connect() as conn:
        for name in data_tables(engine):
            quoted = engine.dialect.identifier_preparer.quote(name)
            # Table names come from the database's own catalogue, never from input.
            if conn.execute(text(f"SELECT 1 FROM {quoted} LIMIT 1")).first():  # nosec B608
                return True
    return False


def reset_data(engine: Engine, identity: TopicIdentity | None) -> list[str]:
    """Empty every data table (the dedupe log included), zero the integrators' counters, and
    record `identity` as the topic the (now empty) data belong to. Returns the tables emptied.

    Integrators, their tokens, ownership and grants are kept: they say who may write, not what
    was written.
    """
    meta = MetaData()
    meta.reflect(engine)
    with engine.begin() as conn:
        # Children before parents, for the foreign keys.
        tables = [t for t in reversed(meta.sorted_tables) if t.name not in NOT_DATA]
        emptied = [t.name for t in tables]
        if conn.dialect.name == "postgresql" and tables:
            # One statement, without scanning rows: a production history may be large.
            quote = conn.dialect.identifier_preparer.quote
            names = ", ".join(quote(t.name) for t in tables)
            conn.execute(text(f"TRUNCATE TABLE {names}"))  # nosec B608
        else:
            for table in tables:
                conn.execute(table.delete())
        integrators = meta.tables.get("integrators")
        if integrators is not None:
            counters = {
                c: 0
                for c in ("accepted_total", "duplicate_total", "rejected_total")
                if c in integrators.c
            }
            if counters:
                conn.execute(update(integrators).values(**counters))
        conn.execute(delete(TopicIdentityRow))
    if identity is not None:
        record_identity(engine, identity, replace=True)
    return sorted(emptied)


def mismatch_message(current: TopicIdentity, recorded: TopicIdentity, since: datetime) -> str:
    """What a person reads when the broker's topic is new: French first, then English."""
    return (
        f"Le topic {current.topic} du broker n'est pas celui dont la base contient les données : "
        f"base {recorded.short()}, enregistré le {since:%Y-%m-%d %H:%M} UTC ; broker "
        f"{current.short()}. Le broker a été recréé ou a perdu ses données (le broker embarqué "
        "garde tout en mémoire) : la base décrit des messages qu'il n'a pas, et les mêler aux "
        "nouveaux compterait les patients deux fois. Rebranchez le broker d'origine, ou repartez "
        "de zéro avec `parcours db reset --yes` (efface les données dérivées et le journal de "
        "dédoublonnage, garde les intégrateurs) puis renvoyez les flux.\n"
        f"The broker's topic {current.topic} is not the one the database's data came from: "
        f"database {recorded.short()}, recorded {since:%Y-%m-%d %H:%M} UTC; broker "
        f"{current.short()}. The broker was recreated or lost its data (the embedded broker "
        "keeps everything in memory): the database describes records it does not hold, and "
        "mixing them with new ones would count patients twice. Reconnect the original broker, "
        "or start clean with `parcours db reset --yes` (empties the derived data and the dedupe "
        "log, keeps the integrators) and send the feeds again."
    )


def verify_identity(engine: Engine, current: TopicIdentity) -> bool:
    """Check `current` against SQL: True if SQL holds this topic's identity, or held none and
    now does (recorded here). Raises TopicIdentityError if SQL belongs to another topic."""
    found = recorded_identity(engine, current.topic)
    if found is None:
        if holds_data(engine):
            # A database from before identities were recorded: its topic cannot be told apart,
            # so it is adopted, and said so once.
            log.warning(
                "the database holds data but no identity for %s; adopting the broker's (%s)",
                current.topic,
                current.short(),
            )
        record_identity(engine, current)
        found = recorded_identity(engine, current.topic)
        if found is None:
            raise TopicIdentityError(f"the identity of {current.topic} could not be recorded")
    recorded, since = found
    if recorded.topic_id != current.topic_id:
        raise TopicIdentityError(mismatch_message(current, recorded, since))
    return True


def check_topic_identity(settings: Settings, engine: Engine, role: str) -> None:
    """Start hook of the stream worker and the gateway: stop with TopicIdentityError if the
    broker's raw topic is not the one the SQL data came from.

    A broker or a database that does not answer is not a mismatch: the gateway starts anyway
    (it answers 503 until both are back), and this check is logged as skipped.
    """
    topics = Topics.from_settings(settings)
    try:
        ensure_topics(
            settings.bootstrap,
            topics.all(),
            settings.topic_partitions,
            settings.topic_replication_factor,
        )
        current = broker_identity(settings.bootstrap, topics.raw)
    except (KafkaError, OSError) as exc:
        log.warning("%s: topic identity not checked, the broker does not answer (%s)", role, exc)
        return
    if current is None:
        log.warning(
            "%s: the broker gives no topic id for %s; identity not checked", role, topics.raw
        )
        return
    try:
        verify_identity(engine, current)
    except OperationalError as exc:
        log.warning("%s: topic identity not checked, the database does not answer (%s)", role, exc)
        return
    log.info("%s: raw topic %s is the database's (%s)", role, topics.raw, current.short())


class TopicGuard:
    """For a running process: re-check, at most every `interval_s`, that the broker's raw topic is
    still the database's, and raise TopicIdentityError while it is not.

    The start check cannot see a broker that restarts empty under a running gateway; this guard,
    called before the dedupe lookup, makes the gateway answer 503 instead of "duplicate" for
    resources the new topic never received. A broker that does not answer keeps the last verdict
    (publishing will fail on its own), except for a forced check: a caller that lost its
    connection to the broker forces one before it trusts the verdict again, and a forced check
    that cannot reach the broker raises.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap = settings.bootstrap
        self.topic = Topics.from_settings(settings).raw
        self.engine = engine
        self.interval_s = interval_s
        self.clock = clock
        self._checked_at: float | None = None
        self._error: TopicIdentityError | None = None
        self._lock = threading.Lock()

    def __call__(self, force: bool = False) -> None:
        """Raise TopicIdentityError if the last check found another topic (or none). With
        `force`, check now, and raise as well if the broker does not answer."""
        with self._lock:
            now = self.clock()
            if force or self._checked_at is None or now - self._checked_at >= self.interval_s:
                self._checked_at = now
                if not self._refresh() and force:
                    self._checked_at = None
                    raise TopicIdentityError(
                        f"Le topic {self.topic} n'a pas pu être vérifié sur le broker. / "
                        f"The broker's topic {self.topic} could not be verified."
                    )
            error = self._error
        if error is not None:
            raise error

    def _refresh(self) -> bool:
        """Compare the broker's topic with the database's; False if the broker did not answer."""
        try:
            current = broker_identity(self.bootstrap, self.topic, timeout_s=3.0)
        except (KafkaError, OSError) as exc:
            log.debug("topic identity not re-checked: %s", exc)
            return False
        found = recorded_identity(self.engine, self.topic)
        if found is None:
            if current is not None:
                record_identity(self.engine, current)
            self._error = None
            return True
        recorded, since = found
        if current is None:
            self._error = TopicIdentityError(
                f"Le topic {self.topic} n'existe plus sur le broker (base : {recorded.short()}) ; "
                "le broker a perdu ses données. / "
                f"Topic {self.topic} no longer exists on the broker (database: "
                f"{recorded.short()}); the broker lost its data."
            )
        elif current.topic_id != recorded.topic_id:
            self._error = TopicIdentityError(mismatch_message(current, recorded, since))
        else:
            self._error = None
        return True
