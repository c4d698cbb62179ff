"""A client-side bound on every wait for PostgreSQL, for the gateway's process.

The server's `statement_timeout` cannot help when the server never sees the statement: a
database behind a proxy or a network path that accepts bytes and passes nothing on leaves a
pooled connection waiting forever (the kernel acknowledges the bytes, so TCP timeouts never
fire either). psycopg2 lets a process wait on its sockets itself (its "wait callback"): this one
gives up on a connection whose server has not answered within its statement timeout plus
`MARGIN_S`, shuts its socket down (the pool then discards it), and raises OperationalError,
which the gateway answers with 503.

Connections opened without a statement timeout (see `parcours.db.make_engine`) wait as long as
they would without the callback.
"""

from __future__ import annotations

import os
import re
import select
import socket
from functools import lru_cache
from typing import Any

# The server's own statement timeout answers first when the server is there at all.
MARGIN_S = 1.0
_STATEMENT_TIMEOUT = re.compile(r"statement_timeout=(\d+)")


@lru_cache(maxsize=64)
def wait_limit(dsn: str) -> float | None:
    """How long one wait of a connection with this DSN may last; None for no bound."""
    found = _STATEMENT_TIMEOUT.search(dsn)
    return int(found.group(1)) / 1000 + MARGIN_S if found else None


def abandon(fd: int) -> None:
    """Shut the connection's socket down, so that whatever libpq does with it next (its
    goodbye message when the pool closes it) fails at once instead of waiting in turn."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def ready_within(fd: int, events: int, limit: float | None) -> bool:
    """Whether `fd` became ready for `events` within `limit` seconds (None: no bound).
    `poll`, not `select`: a busy gateway holds descriptors above select's 1024."""
    poller = select.poll()
    poller.register(fd, events | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(None if limit is None else int(limit * 1000)))


def wait_with_deadline(conn: Any) -> None:
    """psycopg2 wait callback: poll `conn` until its operation completes, giving up when the
    server does not move within the connection's limit."""
    import psycopg2
    from psycopg2.extensions import POLL_OK, POLL_READ, POLL_WRITE

    limit = wait_limit(conn.dsn or "")
    while True:
        try:
            state = conn.poll()
            if state == POLL_OK:
                return
            if state == POLL_READ:
                ready = ready_within(conn.fileno(), select.POLLIN, limit)
            elif state == POLL_WRITE:
                ready = ready_within(conn.fileno(), select.POLLOUT, limit)
            else:
                raise psycopg2.OperationalError(f"bad state from poll: {state}")
        except KeyboardInterrupt:
            conn.cancel()
            continue
        if not ready:
            abandon(conn.fileno())
            raise psycopg2.OperationalError(
                f"could not receive data from server: no answer within {limit:g} s"
            )


def bound_database_waits() -> None:
    """Make every psycopg2 connection of this process wait through `wait_with_deadline`."""
    try:
        import psycopg2.extensions
    except ImportError:  # SQLite only: nothing to bound
        return
    psycopg2.extensions.set_wait_callback(wait_with_deadline)
