"""Dashboard accounts: who may sign in, with which role, and the trail of what they opened.

No Streamlit import: the `parcours users` commands, the demo and the tests use it as it is.
Passwords are kept as argon2id hashes (argon2-cffi's defaults, about 50 ms a check), never in
clear; an account made for the hospital's OIDC sign-in has no password at all.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pandas as pd
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, func, insert, select, update

from dashboard.sessions import password_stamp
from parcours.db.dashboard_models import AccessAuditRow, DashboardUserRow


class Role(StrEnum):
    """What a person does with the dashboard; each role sees its own pages."""

    COORDINATOR = "coordinator"
    MANAGER = "manager"
    INTEGRATOR = "integrator"
    ADMIN = "admin"


class AccountError(ValueError):
    """An account cannot be made or changed as asked. The message says why, in French; `template`
    and `values` let a page show it in the reader's language."""

    def __init__(self, template: str, **values: object) -> None:
        super().__init__(template.format(**values))
        self.template = template
        self.values = values


@dataclass(frozen=True)
class User:
    """A signed-in person."""

    username: str
    role: Role
    hospitals: tuple[str, ...] = ()


_HASHER = PasswordHasher()
# Checked against when the name is unknown, so that a wrong name costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("parcours-no-such-account")
MIN_PASSWORD = 10


def _now() -> datetime:
    return datetime.now(UTC)


def create_user(
    engine: Engine,
    username: str,
    role: Role | str,
    password: str | None,
    hospitals: Sequence[str] = (),
) -> User:
    """Make an account; `password` None makes one that signs in only through OIDC."""
    name = username.strip()
    if not name or len(name) > 128:
        raise AccountError("un identifiant a de 1 à 128 caractères")
    try:
        role = Role(role)
    except ValueError as exc:
        raise AccountError(
            "rôle inconnu « {role} » : {roles}", role=role, roles=", ".join(Role)
        ) from exc
    if password is not None and len(password) < MIN_PASSWORD:
        raise AccountError("un mot de passe a au moins {n} caractères", n=MIN_PASSWORD)
    with engine.begin() as conn:
        if conn.scalar(select(DashboardUserRow.username).where(DashboardUserRow.username == name)):
            raise AccountError("le compte « {name} » existe déjà", name=name)
        conn.execute(
            insert(DashboardUserRow).values(
                username=name,
                role=role.value,
                password_hash=_HASHER.hash(password) if password is not None else None,
                hospitals=list(hospitals) or None,
                active=True,
                created_at=_now(),
            )
        )
    return User(name, role, tuple(hospitals))


def set_active(engine: Engine, username: str, active: bool) -> None:
    """Disable (or enable again) an account; a disabled account cannot sign in."""
    with engine.begin() as conn:
        changed = conn.execute(
            update(DashboardUserRow)
            .where(DashboardUserRow.username == username)
            .values(active=active, disabled_at=None if active else _now())
        ).rowcount
    if not changed:
        raise AccountError("aucun compte « {name} »", name=username)


def list_users(engine: Engine) -> pd.DataFrame:
    """Every account, by name (no password hash)."""
    u = DashboardUserRow
    with engine.connect() as conn:
        result = conn.execute(
            select(
                u.username,
                u.role,
                u.hospitals,
                u.active,
                u.created_at,
                u.disabled_at,
                u.last_login_at,
                u.password_hash.is_not(None).label("has_password"),
            ).order_by(u.username)
        )
        return pd.DataFrame(result.mappings().all(), columns=list(result.keys()))


def _account(engine: Engine, username: str) -> Any:
    with engine.connect() as conn:
        return (
            conn.execute(
                select(DashboardUserRow.__table__).where(DashboardUserRow.username == username)
            )
            .mappings()
            .first()
        )


def _user(row: Any) -> User | None:
    if row is None or not row["active"]:
        return None
    return User(row["username"], Role(row["role"]), tuple(row["hospitals"] or ()))


def authenticate(engine: Engine, username: str, password: str) -> User | None:
    """The user if the name and password match an active account, else None.

    Every attempt, refused or not, goes to the access trail.
    """
    name = username.strip()
    row = _account(engine, name)
    stored = row["password_hash"] if row is not None and row["password_hash"] else _DUMMY_HASH
    try:
        ok = _HASHER.verify(stored, password) and stored is not _DUMMY_HASH
    except (VerificationError, InvalidHashError):
        ok = False
    user = _user(row) if ok else None
    _record_sign_in(engine, name, user)
    return user


def session_user(engine: Engine, username: str) -> tuple[User, str] | None:
    """An active local account (one with a password) and the stamp of its password, which a
    session cookie carries: a new password ends the sessions made with the old one."""
    row = _account(engine, username)
    user = _user(row)
    if user is None or not row["password_hash"]:
        return None
    return user, password_stamp(row["password_hash"])


def record_sign_out(engine: Engine, user: User) -> None:
    """Trace a sign-out; it also ends every kept session of that account issued before."""
    with engine.begin() as conn:
        conn.execute(
            insert(AccessAuditRow).values(
                username=user.username[:128],
                role=user.role.value,
                action="sign_out",
                patient_id=None,
                at=_now(),
            )
        )


def last_sign_out(engine: Engine, username: str) -> datetime | None:
    """When the account last signed out, if ever."""
    a = AccessAuditRow
    with engine.connect() as conn:
        at = conn.scalar(
            select(func.max(a.at)).where(a.username == username, a.action == "sign_out")
        )
    if at is None:
        return None
    stamp = pd.Timestamp(at)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).to_pydatetime()


def oidc_user(engine: Engine, username: str) -> User | None:
    """The role of someone the hospital's identity provider signed in, from their account here.

    The provider says who they are; this store says what they may see. No account, no access.
    """
    user = _user(_account(engine, username))
    _record_sign_in(engine, username, user)
    return user


def _record_sign_in(engine: Engine, username: str, user: User | None) -> None:
    at = _now()
    with engine.begin() as conn:
        conn.execute(
            insert(AccessAuditRow).values(
                username=username[:128],
                role=user.role.value if user else None,
                action="sign_in" if user else "sign_in_refused",
                patient_id=None,
                at=at,
            )
        )
        if user:
            conn.execute(
                update(DashboardUserRow)
                .where(DashboardUserRow.username == user.username)
                .values(last_login_at=at)
            )


def record_patient_view(engine: Engine, user: User, patient_id: str) -> None:
    """Write that `user` opened `patient_id`'s pathway, now."""
    with engine.begin() as conn:
        conn.execute(
            insert(AccessAuditRow).values(
                username=user.username,
                role=user.role.value,
                action="view_patient",
                patient_id=patient_id,
                at=_now(),
            )
        )


def access_audit(
    engine: Engine, username: str = "", patient_id: str = "", limit: int = 500
) -> pd.DataFrame:
    """The latest accesses, newest first, optionally for one user or one patient."""
    a = AccessAuditRow
    query = (
        select(a.at, a.username, a.role, a.action, a.patient_id)
        .order_by(a.at.desc(), a.access_id.desc())
        .limit(limit)
    )
    if username:
        query = query.where(a.username == username)
    if patient_id:
        query = query.where(a.patient_id == patient_id)
    with engine.connect() as conn:
        result = conn.execute(query)
        return pd.DataFrame(result.mappings().all(), columns=list(result.keys()))


def ensure_demo_accounts(engine: Engine) -> dict[Role, str]:
    """One account per role for the demo, named after the role, each with a new random password.

    An existing demo account gets a new password (the previous banner's is gone), so the
    passwords printed by this run are the ones that work. Returns {role: password}.
    """
    passwords: dict[Role, str] = {}
    for role in Role:
        password = secrets.token_urlsafe(12)
        with engine.begin() as conn:
            exists = conn.scalar(
                select(DashboardUserRow.username).where(DashboardUserRow.username == role.value)
            )
            if exists:
                conn.execute(
                    update(DashboardUserRow)
                    .where(DashboardUserRow.username == role.value)
                    .values(
                        role=role.value,
                        password_hash=_HASHER.hash(password),
                        active=True,
                        disabled_at=None,
                    )
                )
        if not exists:
            create_user(engine, role.value, role, password)
        passwords[role] = password
    return passwords
