"""Which broker topic the SQL data came from.

`topic_identity` holds one row per topic the stream worker and the gateway read or write: the
Kafka topic id (a UUID the broker gives a topic when it creates it) and the cluster id. Rows in
`ingest_log`, `stays`, `location_occupancy`… describe that topic's records only; a broker whose
topic carries another id never received them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from parcours.db.models import Base, UTCDateTime


class TopicIdentityRow(Base):
    """The identity of the topic whose records the SQL data were built from."""

    __tablename__ = "topic_identity"

    topic: Mapped[str] = mapped_column(String(256), primary_key=True)
    topic_id: Mapped[str] = mapped_column(String(64))
    cluster_id: Mapped[str] = mapped_column(String(256))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
