"""Helpers for integration and e2e tests: run `parcours` subcommands as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from parcours.db import upgrade
from parcours.settings import normalise_db_url

T = TypeVar("T")


def parcours_env(**overrides: str) -> dict[str, str]:
    """The current environment plus `overrides` (PARCOURS_* settings, URLs)."""
    env = dict(os.environ)
    env.update(overrides)
    return env


@contextmanager
def parcours_process(
    args: list[str], env: dict[str, str], log_path: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `parcours ARGS…` in its own process group; stop it (SIGTERM, then SIGKILL) on exit."""
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "parcours", *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_group(proc)
        if log_path:
            out.close()  # type: ignore[union-attr]


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM the process group of `proc`, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_until(
    probe: Callable[[], T], timeout_s: float = 60.0, every_s: float = 0.5, what: str = ""
) -> T:
    """Call `probe` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: last {last!r}")
        time.sleep(every_s)
        last = probe()
    return last


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, migrated PostgreSQL database on the server of `server_url`, dropped afterwards."""
    base = make_url(normalise_db_url(server_url))
    name = f"parcours_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
