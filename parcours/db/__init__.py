"""SQL access shared by every Parcours process: engine creation, migrations, upserts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase

from parcours.settings import normalise_db_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str, timeout_s: float | None = None) -> Engine:
    """An engine for `url`; SQLite gets foreign keys, WAL and a busy timeout.

    With `timeout_s`, connecting, waiting for a pooled connection and each PostgreSQL
    statement give up after about that long (a server that accepts and never answers raises
    OperationalError instead of hanging the caller).
    """
    url = normalise_db_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": timeout_s or 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if timeout_s is None:
        # Parameters can hold patient data (and megabytes of it): errors never print them.
        return create_engine(url, pool_pre_ping=True, hide_parameters=True)
    millis = max(1, int(timeout_s * 1000))
    return create_engine(
        url,
        pool_pre_ping=True,
        hide_parameters=True,
        pool_timeout=timeout_s,
        connect_args={
            # libpq counts whole seconds, and takes 2 as its least.
            "connect_timeout": max(2, round(timeout_s)),
            "options": f"-c statement_timeout={millis} -c lock_timeout={millis}",
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
        },
    )


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and at `url`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_db_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "heads") -> None:
    """Apply every migration up to `revision` (all branch heads by default)."""
    command.upgrade(alembic_config(url), revision)


def upsert(
    conn: Connection,
    table: Table | type[DeclarativeBase],
    rows: Sequence[Mapping[str, Any]],
    key: Iterable[str],
    update: Iterable[str] | None = None,
) -> None:
    """Insert `rows` into `table` (a Table or a model class), or update the existing rows that
    share `key` (PostgreSQL and SQLite).

    `update` names the columns to overwrite on conflict; by default every non-key column.
    Replaying the same rows leaves the table unchanged, which is what makes sinks idempotent.
    """
    if not rows:
        return
    if not isinstance(table, Table):
        table = cast(Table, table.__table__)
    key_cols = list(key)
    dialect = conn.dialect.name
    insert_fn: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert_fn(table)
    cols = (
        list(update)
        if update is not None
        else [c.name for c in table.columns if c.name not in key_cols and c.name in rows[0]]
    )
    if cols:
        stmt = stmt.on_conflict_do_update(
            index_elements=key_cols, set_={c: stmt.excluded[c] for c in cols}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=key_cols)
    conn.execute(stmt, list(rows))
