"""What every dashboard page shares: settings, the database engine, the signed-in user, the
chosen language, and tables written for people (labels, local times, no empty "None" cells)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from dashboard import i18n
from dashboard.accounts import Role, User
from parcours.db import make_engine
from parcours.settings import Settings

REFRESH = "10s"


@st.cache_resource
def settings() -> Settings:
    """The dashboard process's settings, read once."""
    return Settings()


@st.cache_resource
def engine() -> Engine:
    """One engine (connection pool) for the whole Streamlit server."""
    return make_engine(settings().db_url)


def lang() -> str:
    """The language this browser session chose (French unless switched)."""
    chosen = st.session_state.get("lang")
    return chosen if isinstance(chosen, str) and chosen in i18n.languages() else i18n.DEFAULT


def chart(figure: Any) -> None:
    """Show an Altair chart across the page, its numbers and dates written in the session's
    language."""
    st.altair_chart(figure.configure(locale=i18n.chart_locale(lang())), width="stretch")


def _(message: str, **values: Any) -> str:
    """`message` (written in French) in the session's language, `{fields}` filled."""
    return i18n.translate(lang(), message, **values)


def _n(singular: str, plural: str, n: int, **values: Any) -> str:
    """The singular or plural message (written in French) for `n`, in the session's language."""
    return i18n.translate_plural(lang(), singular, plural, n, **values)


def current_user() -> User | None:
    """The signed-in user of this browser session, if any."""
    user = st.session_state.get("user")
    return user if isinstance(user, User) else None


def signed_in() -> User:
    """The signed-in user; pages run only after sign-in, so this stops a page reached without."""
    user = current_user()
    if user is None:
        st.error(_("Connectez-vous pour voir cette page."))
        st.stop()
    return user


def require(*roles: Role) -> User:
    """The signed-in user if their role may see this part of a page, else a refusal and stop."""
    user = signed_in()
    if user.role not in roles:
        refuse()
    return user


def refuse() -> None:
    """Say clearly that this role may not open this page, and show nothing of it."""
    st.error(
        _(
            "Accès refusé : votre rôle ({role}) ne permet pas d'ouvrir cette page. "
            "Demandez à un administrateur si vous en avez besoin.",
            role=role_label(signed_in().role),
        )
    )
    st.stop()


ROLE_LABELS = {
    Role.COORDINATOR: "coordination des soins",
    Role.MANAGER: "gestion des lits",
    Role.INTEGRATOR: "intégration",
    Role.ADMIN: "administration",
}


def role_label(role: Role | str) -> str:
    """A role in words."""
    try:
        return _(ROLE_LABELS[Role(role)])
    except ValueError:
        return str(role)


def now() -> datetime:
    """The current instant (UTC)."""
    return datetime.now(UTC)


def when(value: Any, with_date: bool = True) -> str:
    """An instant in the territory's time zone, in the session's date format."""
    return i18n.when(lang(), value, settings().timezone, with_date)


def number(value: float | None, digits: int = 0) -> str:
    """A number in the session's format."""
    return i18n.number(lang(), value, digits)


def percent(value: float | None) -> str:
    """A ratio as a percentage in the session's format (92 % in French, 92% in English)."""
    return i18n.percent(lang(), value)


def local_time(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Show UTC timestamps in the territory's time zone, the one staff read on the ward clock."""
    out = frame.copy()
    for col in columns:
        if col in out:
            out[col] = pd.to_datetime(out[col], utc=True).dt.tz_convert(settings().timezone)
    return out


Kind = Literal["text", "int", "time", "hours", "percent", "bool", "float"]


@dataclass(frozen=True)
class Col:
    """A column shown to people: the data's column, its label (French) and how to write it."""

    name: str
    label: str
    kind: Kind = "text"


def readable(frame: pd.DataFrame, columns: Sequence[Col]) -> pd.DataFrame:
    """`frame` reduced to `columns`, labelled in the session's language, each value written for
    people: local times, French numbers, yes/no, and a dash where there is nothing."""
    out = pd.DataFrame(index=frame.index)
    for col in columns:
        values = frame[col.name] if col.name in frame else pd.Series(None, index=frame.index)
        label = _(col.label)
        if col.kind == "time":
            out[label] = i18n.whens(lang(), values, settings().timezone)
        elif col.kind == "hours":
            out[label] = [i18n.duration(lang(), v) for v in values]
        elif col.kind == "percent":
            out[label] = [i18n.percent(lang(), v) for v in values]
        elif col.kind == "float":
            out[label] = [number(v, 1) for v in values]
        elif col.kind == "bool":
            out[label] = [
                i18n.EMPTY if v is None or pd.isna(v) else (_("oui") if v else _("non"))
                for v in values
            ]
        elif col.kind == "int":
            numbers = pd.to_numeric(values, errors="coerce")
            # A column with a gap is written out, so that the gap reads as a dash, not "None".
            out[label] = (
                [number(v) for v in numbers] if numbers.isna().any() else numbers.astype("int64")
            )
        else:
            out[label] = [i18n.text(v) for v in values]
    return out.reset_index(drop=True)


def table(frame: pd.DataFrame, columns: Sequence[Col], key: str | None = None) -> Any:
    """Show `frame` as a readable table; with `key`, one row can be selected (returned)."""
    shown = readable(frame, columns)
    if key is None:
        return st.dataframe(shown, hide_index=True, width="stretch")
    return st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        key=key,
        on_select="rerun",
        selection_mode="single-row",
    )


def selected_row(event: Any) -> int | None:
    """The position of the row selected in a table shown with a key, if any."""
    rows = getattr(getattr(event, "selection", None), "rows", None) or []
    return int(rows[0]) if rows else None


def open_patient(patient_id: str) -> None:
    """Go to the pathway page with `patient_id` chosen."""
    st.session_state["open_patient"] = patient_id
    st.switch_page(st.session_state["pages"]["patient"])


def word(words: dict[str, str], code: Any) -> str | None:
    """The French word (in the session's language) for a stored code; the code if unknown."""
    if code is None or (not isinstance(code, str) and pd.isna(code)):
        return None
    return _(words.get(str(code), str(code)))


@st.cache_data(ttl=60, show_spinner=False)
def places() -> pd.DataFrame:
    """Every ward with its service and hospital by name (read once a minute: the Location tree
    rarely changes)."""
    from dashboard import queries

    return queries.places(engine())


@st.cache_data(ttl=60, show_spinner=False)
def hospital_names() -> dict[str, str]:
    """Hospital id → name (read once a minute)."""
    from dashboard import queries

    return queries.hospitals(engine())
