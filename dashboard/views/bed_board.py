"""Tableau des lits: occupancy from hospital to service to ward, the week's heat map, beds free
and patients waiting in the ED for a bed. No patient is named here."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import outlook, queries
from dashboard.accounts import Role
from dashboard.common import (
    REFRESH,
    Col,
    _,
    _n,
    chart,
    engine,
    hospital_names,
    now,
    number,
    percent,
    readable,
    require,
    settings,
    when,
    word,
)
from dashboard.common import places as known_places
from dashboard.labels import LEVELS
from dashboard.views.shared import occupancy_level, stale_warning

require(Role.MANAGER, Role.ADMIN)
st.title(_("Tableau des lits"))
st.caption(
    _(
        "Occupation en temps réel, de l'établissement à l'unité. Vert : moins de 85 %, "
        "orange : 85 à 95 %, rouge : 95 % et plus."
    )
)


def coloured_bars(frame: pd.DataFrame, label: str) -> alt.Chart:
    """Occupancy per unit, one bar each, coloured by level."""
    data = frame.assign(
        unit=frame["name"].fillna(frame["unit_id"]),
        level=[_(occupancy_level(r)) for r in frame["occupancy_rate"]],
        rate=frame["occupancy_rate"].fillna(0),
    )
    scale = alt.Scale(
        domain=[_("normale"), _("tendue"), _("saturée")], range=["#2e7d32", "#ef6c00", "#c62828"]
    )
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            # The section heading names the level: no axis title to clip on a short chart. Each
            # unit named in full (« CHU Dijon Bourgogne », not « CHU Dijon Bourg… »): Streamlit's
            # chart theme cuts axis labels at 100 px.
            y=alt.Y("unit:N", sort="-x", title=None, axis=alt.Axis(labelLimit=400)),
            x=alt.X("rate:Q", title=_("Taux d'occupation"), axis=alt.Axis(format="%")),
            color=alt.Color("level:N", scale=scale, title=_("Niveau")),
            tooltip=[
                alt.Tooltip("unit:N", title=label),
                alt.Tooltip("occupied:Q", title=_("Lits occupés")),
                alt.Tooltip("capacity:Q", title=_("Capacité")),
                alt.Tooltip("rate:Q", title=_("Taux d'occupation"), format=".0%"),
            ],
        )
        # Room for the level legend (three entries) even with one or two bars.
        .properties(height=max(130, 50 + 30 * len(data)))
    )


UNIT_COLUMNS = [
    Col("name", "Nom"),
    Col("occupied", "Lits occupés", "int"),
    Col("capacity", "Capacité", "int"),
    Col("free", "Lits libres", "int"),
    Col("occupancy_rate", "Taux d'occupation", "percent"),
]


def drill(frame: pd.DataFrame, level: str, key: str) -> str | None:
    """A chart and a table of `frame`'s units; the unit whose row is picked, if any."""
    label = word(LEVELS, level) or level
    if frame.empty:
        st.caption(_("Aucune unité à ce niveau."))
        return None
    chart(coloured_bars(frame, label))
    shown = frame.reset_index(drop=True)
    event = st.dataframe(
        _styled(shown),
        hide_index=True,
        width="stretch",
        key=key,
        on_select="rerun",
        selection_mode="single-row",
    )
    rows = event.selection.rows if event is not None else []
    return str(shown["unit_id"].iloc[rows[0]]) if rows else None


def _styled(frame: pd.DataFrame) -> object:
    table = readable(frame, UNIT_COLUMNS)
    rate_label = _("Taux d'occupation")
    colours = {"normale": "#c8e6c9", "tendue": "#ffe0b2", "saturée": "#ffcdd2"}
    levels = [occupancy_level(r) for r in frame["occupancy_rate"]]
    return table.style.apply(
        lambda col: (
            [f"background-color: {colours[lv]}" for lv in levels]
            if col.name == rate_label
            else [""] * len(col)
        ),
        axis=0,
    )


def departures_today(col: Any, unit_ids: list[str], at: datetime) -> None:
    """Departures expected by midnight over the board's top units, from their forecasts."""
    gone, covered = queries.expected_departures(
        engine(), unit_ids, at, outlook.end_of_day(at, settings().timezone)
    )
    if not covered:
        col.metric(
            _("Sorties attendues d'ici minuit"),
            "—",
            help=_(
                "Aucune prévision à jour : le prévisionniste (`parcours forecast run --every "
                "600`) n'a pas encore tourné, ou plus depuis des heures."
            ),
        )
        return
    col.metric(
        _("Sorties attendues d'ici minuit"),
        number(gone),
        help=_n(
            "Patients présents dont la sortie est attendue avant minuit, selon la prévision "
            "stock–flux de {n} unité sur {total}.",
            "Patients présents dont la sortie est attendue avant minuit, selon la prévision "
            "stock–flux de {n} unités sur {total}.",
            len(covered),
            total=len(unit_ids),
        ),
    )


@st.fragment(run_every=REFRESH)
def board() -> None:
    """Totals, the drill-down and the ED; refreshes itself."""
    at = now()
    stale_warning(at)
    hospitals_frame = queries.bed_board(engine(), "hospital")
    wards = queries.bed_board(engine(), "ward")
    # Without a Location tree above the wards, the wards themselves are the top of the board.
    top = hospitals_frame if not hospitals_frame.empty else wards
    ed = queries.ed_now(engine(), at, timedelta(hours=settings().alert_ed_boarding_hours))
    # Two rows of three, so that each label reads whole: beds now, then what moves today.
    c1, c2, c3 = st.columns(3)
    c4, c5, c6 = st.columns(3)
    occupied = int(top["occupied"].sum()) if not top.empty else 0
    capacity = top["capacity"].sum() if not top.empty else 0
    c1.metric(_("Lits occupés"), number(occupied))
    c2.metric(_("Lits libres"), number(capacity - occupied) if capacity else "—")
    c3.metric(_("Taux d'occupation"), percent(occupied / capacity) if capacity else "—")
    departures_today(c4, list(top["unit_id"]), at)
    c5.metric(_("Patients aux urgences"), number(len(ed)))
    c6.metric(
        _("En attente d'un lit aux urgences"),
        number(int(ed["boarding"].sum()) if not ed.empty else 0),
        help=_(
            "Patients présents aux urgences depuis plus de {hours} h.",
            hours=number(settings().alert_ed_boarding_hours),
        ),
    )
    if top.empty:
        st.info(
            _(
                "Pas encore d'occupation. Lancez le traitement des flux "
                "(`parcours streams worker`) ou la démonstration (`parcours demo`)."
            )
        )
        return
    full_wards = wards[wards["occupancy_rate"] >= 1.0]
    if not full_wards.empty:
        names = full_wards["name"].fillna(full_wards["unit_id"]).tolist()
        st.warning(
            _n(
                "{n} unité pleine ou au-delà : {names}",
                "{n} unités pleines ou au-delà : {names}",
                len(names),
                names=", ".join(names),
            )
        )
    st.caption(_("Mis à jour : {at}", at=when(top["as_of"].max())))
    if hospitals_frame.empty:
        st.subheader(_("Unités"))
        ward = drill(wards, "ward", "pick_ward")
        if ward is None:
            st.caption(
                _(
                    "Choisissez une unité dans le tableau pour voir son occupation des derniers "
                    "jours et sa prévision."
                )
            )
        else:
            trend("ward", ward, wards)
        return
    st.subheader(_("Établissements"))
    hospital = drill(hospitals_frame, "hospital", "pick_hospital")
    if hospital is None:
        st.caption(
            _(
                "Choisissez un établissement dans le tableau pour voir ses services, "
                "son occupation des derniers jours et sa prévision."
            )
        )
        return
    services = queries.bed_board(engine(), "service")
    services = services[services["hospital_id"] == hospital]
    st.subheader(_("Services"))
    service = drill(services, "service", "pick_service")
    wards = wards[wards["hospital_id"] == hospital]
    if service is not None:
        places = known_places()
        in_service = set(places.loc[places["service_id"] == service, "ward_id"])
        wards = wards[wards["unit_id"].isin(in_service)]
    st.subheader(_("Unités"))
    ward = drill(wards, "ward", "pick_ward")
    picked = [
        (level, unit, frame)
        for level, unit, frame in (
            ("hospital", hospital, hospitals_frame),
            ("service", service, services),
            ("ward", ward, wards),
        )
        if unit is not None
    ]
    level, unit, frame = picked[-1]
    trend(level, unit, frame)


def trend(level: str, unit: str, frame: pd.DataFrame) -> None:
    """The picked unit's last days of occupancy beside its forecast band, and the breakdown."""
    row = frame[frame["unit_id"] == unit].iloc[0]
    name = row["name"] if isinstance(row["name"], str) else unit
    occupied = float(row["occupied"]) if pd.notna(row["occupied"]) else None
    capacity = float(row["capacity"]) if pd.notna(row["capacity"]) else None
    outlook.show(level, unit, name, occupied, capacity)


board()

st.subheader(_("Occupation des unités heure par heure, 7 derniers jours"))


@st.cache_data(ttl=300, show_spinner=False)
def week_heat(since: datetime, tz: str) -> pd.DataFrame:
    """The heat map's cells (ward, local hour, beds occupied, rate); the census is hourly, so a
    few minutes' cache loses nothing."""
    heat = queries.occupancy_heatmap(engine(), since)
    return pd.DataFrame(
        {
            "unit": queries.ward_labels(heat, hospital_names()),
            # Naive local time: the chart shows it as the ward clock reads it, whatever the browser.
            "local": pd.to_datetime(heat["hour"], utc=True).dt.tz_convert(tz).dt.tz_localize(None),
            "occupancy": heat["occupancy"],
            "rate": heat["rate"].fillna(0),
        }
    )


hour_now = now().replace(minute=0, second=0, microsecond=0)
heat = week_heat(hour_now - timedelta(days=7), settings().timezone)
if heat.empty:
    st.caption(_("Pas encore d'historique horaire."))
else:
    heatmap = (
        alt.Chart(heat)
        .mark_rect()
        .encode(
            # One cell per hour: without the time unit, each rect spans the whole axis and the
            # last hour paints over the week.
            x=alt.X(
                "yearmonthdatehours(local):T",
                title=_("Heure"),
                axis=alt.Axis(format="%d/%m %Hh", labelAngle=-45),
            ),
            # Every ward named in full: a hidden or cut label leaves a row nobody can read.
            y=alt.Y("unit:N", title=_("Unité"), axis=alt.Axis(labelLimit=400, labelOverlap=False)),
            color=alt.Color(
                "rate:Q",
                title=_("Taux d'occupation"),
                scale=alt.Scale(
                    scheme="redyellowgreen", reverse=True, domain=[0.5, 1.1], clamp=True
                ),
                legend=alt.Legend(format="%"),
            ),
            tooltip=[
                alt.Tooltip("unit:N", title=_("Unité")),
                alt.Tooltip(
                    "yearmonthdatehours(local):T", title=_("Heure"), format="%d/%m/%Y %H:%M"
                ),
                alt.Tooltip("occupancy:Q", title=_("Lits occupés")),
                alt.Tooltip("rate:Q", title=_("Taux d'occupation"), format=".0%"),
            ],
        )
        .properties(height=max(150, 22 * heat["unit"].nunique()))
    )
    chart(heatmap)
