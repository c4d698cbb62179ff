"""Bearer tokens, one per integrator, stored as SHA-256 hashes.

Tokens are 256 random bits, so a plain SHA-256 is enough to store them (a slow password hash
protects guessable secrets, which these are not) and allows an indexed lookup per request.
Every request looks its token up, so a revoked, rotated or expired token stops at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, or_, select, update

from ingest.outcome import IngestError
from parcours.db.ingest_models import IntegratorRow

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# The public prefix of generated tokens (it tells a Parcours token in a log), not a secret.
TOKEN_PREFIX = "prc_"  # nosec B105


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (`prc_…`; the prefix makes leaked tokens easy to grep for)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `45s`, `2w` or plain seconds as a timedelta."""
    m = DURATION.match(text.lower())
    if not m or float(m.group(1)) <= 0:
        raise IngestError(f"invalid duration {text!r}: use e.g. 90d, 12h, 30m or 3600")
    return timedelta(seconds=float(m.group(1)) * UNITS[m.group(2)])


def create_token(
    engine: Engine, name: str, rotate: bool = False, expires_in: timedelta | None = None
) -> str:
    """Register integrator `name` (or replace its token when `rotate`) and return the token.

    The token is shown once; only its hash is stored. With `expires_in`, it stops working
    after that long.
    """
    if not NAME_PATTERN.match(name):
        raise IngestError(
            f"invalid integrator name {name!r}: use 1-64 letters, digits, '_', '.', '-'"
        )
    token = new_token()
    expires_at = datetime.now(UTC) + expires_in if expires_in is not None else None
    with engine.begin() as conn:
        exists = conn.scalar(select(IntegratorRow.name).where(IntegratorRow.name == name))
        if exists and not rotate:
            raise IngestError(
                f"integrator {name!r} already has a token; pass --rotate to replace it"
            )
        if exists:
            conn.execute(
                update(IntegratorRow)
                .where(IntegratorRow.name == name)
                .values(token_hash=hash_token(token), active=True, expires_at=expires_at)
            )
        else:
            conn.execute(
                insert(IntegratorRow).values(
                    name=name,
                    token_hash=hash_token(token),
                    active=True,
                    created_at=datetime.now(UTC),
                    accepted_total=0,
                    duplicate_total=0,
                    rejected_total=0,
                    expires_at=expires_at,
                )
            )
    return token


def revoke_token(engine: Engine, name: str) -> bool:
    """Deactivate integrator `name`'s token at once; False if there is no such integrator."""
    with engine.begin() as conn:
        done = conn.execute(
            update(IntegratorRow).where(IntegratorRow.name == name).values(active=False)
        )
    return bool(done.rowcount)


class Authenticator:
    """Token → integrator name, looked up in SQL on every request (an indexed read), so that
    revoking, rotating or the expiry of a token take effect at once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def source_for(self, token: str) -> str | None:
        """The integrator a token belongs to, or None if it is unknown, revoked or expired."""
        digest = hash_token(token)
        now = datetime.now(UTC)
        row = IntegratorRow
        with self.engine.connect() as conn:
            return conn.scalar(
                select(row.name).where(
                    row.token_hash == digest,
                    row.active.is_(True),
                    or_(row.expires_at.is_(None), row.expires_at > now),
                )
            )


class RateLimiter:
    """A token bucket per integrator: `rate` requests per second on average, `burst` at once.

    Kept per gateway process; with several workers each enforces its own share.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, source: str) -> float:
        """0 if `source` may send a request now (and count it), else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(source, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[source] = (tokens - 1.0, now)
                return 0.0
            self._buckets[source] = (tokens, now)
            return (1.0 - tokens) / self.rate
