"""Bearer tokens, one per integrator, stored as SHA-256 hashes.

Tokens are 256 random bits, so a plain SHA-256 is enough to store them (a slow password hash
protects guessable secrets, which these are not) and allows an indexed lookup per request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update

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


def create_token(engine: Engine, name: str, rotate: bool = False) -> str:
    """Register integrator `name` (or replace its token when `rotate`) and return the token.

    The token is shown once; only its hash is stored.
    """
    if not NAME_PATTERN.match(name):
        raise IngestError(
            f"invalid integrator name {name!r}: use 1-64 letters, digits, '_', '.', '-'"
        )
    token = new_token()
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
                .values(token_hash=hash_token(token), active=True)
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
                )
            )
    return token


class Authenticator:
    """Token → integrator name, with a short cache so each request does not hit SQL.

    A rotated or deactivated token stops working within `ttl_s`.
    """

    def __init__(self, engine: Engine, ttl_s: float = 30.0) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def source_for(self, token: str) -> str | None:
        """The integrator a token belongs to, or None if it is unknown or inactive."""
        digest = hash_token(token)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        with self.engine.connect() as conn:
            name = conn.scalar(
                select(IntegratorRow.name).where(
                    IntegratorRow.token_hash == digest, IntegratorRow.active.is_(True)
                )
            )
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            # Unknown tokens are cached briefly only: a token created a moment ago must work.
            self._cache[digest] = (name, now + (self.ttl_s if name else 2.0))
        return name
