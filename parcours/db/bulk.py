"""Bounded bulk writes shared by the SQL sinks: insert, upsert, update and delete many rows in a
few statements, each naming at most a fixed number of keys or rows.

On PostgreSQL through psycopg2 the rows travel as one JSON array per statement, which the server
turns back into rows (`json_populate_recordset`); elsewhere through SQLAlchemy's executemany.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, String, Table, and_, any_, bindparam, delete
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from parcours.db import upsert

# Most keys one statement names (`IN`, `= ANY`), and most rows one JSON parameter carries: no
# statement grows with the history (PostgreSQL's default max_stack_depth refuses a row-value
# `IN` of about 10,000 tuples).
KEYS_PER_STATEMENT = 2000
ROWS_PER_STATEMENT = 10_000


def chunks(values: Sequence[Any], size: int = KEYS_PER_STATEMENT) -> Iterator[Sequence[Any]]:
    """`values` in slices of at most `size`."""
    for i in range(0, len(values), size):
        yield values[i : i + size]


def one_of(conn: Connection, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """`column` is one of `values` (at most `KEYS_PER_STATEMENT` of them): one array parameter
    on PostgreSQL (`= ANY`), an `IN` list elsewhere."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(String)))  # type: ignore[no-any-return]
    return column.in_(list(values))  # type: ignore[no-any-return]


def keyed(table: Any, key: Sequence[str], keys: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
    """Conditions that together match the rows whose `key` columns equal one of `keys`, each
    one the key's index can answer: the keys grouped by all their columns but the last, which
    becomes an `IN` list of at most 500 values. (A row-value `IN` is a full scan on SQLite.)"""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for k in keys:
        groups.setdefault(tuple(k[:-1]), []).append(k[-1])
    for prefix, lasts in groups.items():
        for part in chunks(list(dict.fromkeys(lasts)), 500):
            yield and_(
                *(table.c[c] == v for c, v in zip(key[:-1], prefix, strict=True)),
                table.c[key[-1]].in_(list(part)),
            )


def table_of(model: Any) -> Table:
    """The `Table` of a declarative model."""
    return model.__table__  # type: ignore[no-any-return]


def bulk_write(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    key: Sequence[str] | None = None,
    update: Iterable[str] | None = None,
) -> None:
    """Insert `rows` (or upsert them on `key`) in one statement.

    On PostgreSQL the rows travel as one JSON array that the server turns back into rows
    (`json_populate_recordset`): orjson writes it in C, where quoting every value in Python
    (execute_values and its mogrify) cost more than the write itself. Elsewhere
    `parcours.db.upsert`/insert.
    """
    if not rows:
        return
    if len(rows) > ROWS_PER_STATEMENT:
        for part in chunks(rows, ROWS_PER_STATEMENT):
            bulk_write(conn, table, part, key=key, update=update)
        return
    if not json_rows(conn):
        if key is None:
            conn.execute(table.insert(), list(rows))
        else:
            upsert(conn, table, rows, key=key, update=update)
        return
    cols = [c for c in table.columns if c.name in rows[0]]
    names = ", ".join(f'"{c.name}"' for c in cols)
    # A JSON column's None is the JSON `null` (what psycopg2's Json adapter sent), which
    # json_populate_recordset reads as an SQL NULL.
    values = ", ".join(
        f"""COALESCE("{c.name}", 'null')""" if isinstance(c.type, JSON) else f'"{c.name}"'
        for c in cols
    )
    # Identifiers come from the SQLAlchemy schema and the values are bound: no injection.
    sql = (
        f'INSERT INTO "{table.name}" ({names}) SELECT {values}'  # nosec B608
        f' FROM json_populate_recordset(NULL::"{table.name}", %s)'
    )
    if key is not None:
        keys = list(key)
        sets = list(update) if update is not None else [c.name for c in cols if c.name not in keys]
        conflict = ", ".join(f'"{k}"' for k in keys)
        if sets:
            assignments = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in sets)
            sql += f" ON CONFLICT ({conflict}) DO UPDATE SET {assignments}"  # nosec B608
        else:
            sql += f" ON CONFLICT ({conflict}) DO NOTHING"
    execute_json(conn, sql, rows)


def bulk_update(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], key: Sequence[str]
) -> None:
    """Set the other columns of `rows` on the rows of `table` they match on `key`, in one
    statement on PostgreSQL (psycopg2 sends an executemany row by row, a round trip each)."""
    if not rows:
        return
    if len(rows) > ROWS_PER_STATEMENT:
        for part in chunks(rows, ROWS_PER_STATEMENT):
            bulk_update(conn, table, part, key)
        return
    sets = [c for c in rows[0] if c not in key]
    if not json_rows(conn):
        statement = (
            table.update()
            .where(and_(*(table.c[k] == bindparam(f"k_{k}") for k in key)))
            .values({c: bindparam(f"v_{c}") for c in sets})
        )
        params = [{**{f"k_{k}": r[k] for k in key}, **{f"v_{c}": r[c] for c in sets}} for r in rows]
        conn.execute(statement, params)
        return
    assignments = ", ".join(f'"{c}" = v."{c}"' for c in sets)
    matches = " AND ".join(f't."{k}" = v."{k}"' for k in key)
    # Identifiers come from the SQLAlchemy schema and the values are bound: no injection.
    sql = (
        f'UPDATE "{table.name}" AS t SET {assignments}'  # nosec B608
        f' FROM json_populate_recordset(NULL::"{table.name}", %s) AS v WHERE {matches}'
    )
    execute_json(conn, sql, rows)


def bulk_delete(
    conn: Connection,
    table: Table,
    keys: Sequence[tuple[Any, ...]],
    key: Sequence[str],
) -> None:
    """Delete the rows of `table` whose `key` columns are one of `keys`, in bounded statements:
    on PostgreSQL the keys travel as one JSON array per statement (or an array for a one-column
    key), elsewhere as an `IN` list (one column) or one statement per key."""
    if not keys:
        return
    if len(key) == 1:
        for part in chunks(keys):
            conn.execute(delete(table).where(one_of(conn, table.c[key[0]], [k[0] for k in part])))
        return
    if not json_rows(conn):
        # One statement run for each key (executemany), which the key's index answers.
        statement = delete(table).where(and_(*(table.c[k] == bindparam(f"k_{k}") for k in key)))
        conn.execute(statement, [{f"k_{c}": v for c, v in zip(key, k, strict=True)} for k in keys])
        return
    # Table and column names come from the models; the rows are one bound JSON parameter.
    matches = " AND ".join(f't."{k}" = v."{k}"' for k in key)
    sql = (
        f'DELETE FROM "{table.name}" AS t'  # nosec B608
        f' USING json_populate_recordset(NULL::"{table.name}", %s) AS v WHERE {matches}'
    )
    for part in chunks(keys, ROWS_PER_STATEMENT):
        execute_json(conn, sql, [dict(zip(key, k, strict=True)) for k in part])


def json_rows(conn: Connection) -> bool:
    """Whether rows can travel as one JSON array (`bulk_write`): PostgreSQL through psycopg2."""
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2"


def execute_json(conn: Connection, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run `sql`, whose one parameter is `rows` as a JSON array, on the raw psycopg2 cursor."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, (orjson.dumps(list(rows)).decode(),))
    finally:
        cursor.close()
