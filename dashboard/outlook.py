"""A unit's outlook on the bed board: its last days of occupancy beside the next hours' forecast
band, and what that forecast is made of (patients there now, expected departures, expected
admissions). Read from the forecaster's tables; nothing is computed here but sums and lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import queries
from dashboard.common import _, chart, engine, now, number, percent, settings, when
from dashboard.forecast_text import model_label

HISTORY = timedelta(days=7)
# Forecasts older than this are called out: the forecaster runs every few minutes.
STALE_FORECAST = timedelta(hours=6)


def local(values: pd.Series, tz: str) -> pd.Series:
    """UTC instants as naive local times: charts show them as the ward clock reads them."""
    return pd.to_datetime(values, utc=True).dt.tz_convert(tz).dt.tz_localize(None)


def end_of_day(at: datetime, tz: str) -> datetime:
    """The next local midnight after `at`."""
    there = at.astimezone(ZoneInfo(tz))
    midnight = there.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return midnight.replace(tzinfo=ZoneInfo(tz))


def leads(forecast: queries.UnitForecast) -> list[int]:
    """The steps shown in the breakdown: 24, 48 and 72 hours (1, 2, 3 days), as far as the
    forecast reaches."""
    steps = (24, 48, 72) if forecast.freq.lower() == "h" else (1, 2, 3)
    return [s for s in steps if s <= len(forecast.points)] or [len(forecast.points)]


@dataclass(frozen=True)
class Term:
    """One line of the breakdown."""

    lead: int
    ds: object
    now: float | None
    departures: float | None
    admissions: float | None
    stock_flow: float | None
    yhat: float
    lower: float
    upper: float


def breakdown(forecast: queries.UnitForecast) -> list[Term]:
    """The forecast at each of `leads`, with its stock–flow terms where they were stored."""
    terms = forecast.terms.set_index(pd.to_datetime(forecast.terms["ds"], utc=True))
    out = []
    for lead in leads(forecast):
        point = forecast.points.iloc[lead - 1]
        ds = pd.Timestamp(point["ds"])
        ds = ds.tz_localize("UTC") if ds.tzinfo is None else ds.tz_convert("UTC")
        term = terms.loc[ds] if ds in terms.index else None
        here, gone, come = (
            (
                float(term["now"]),
                float(term["expected_discharges"]),
                float(term["expected_admissions"]),
            )
            if term is not None
            else (None, None, None)
        )
        out.append(
            Term(
                lead=lead,
                ds=point["ds"],
                now=here,
                departures=gone,
                admissions=come,
                stock_flow=None if here is None else here - (gone or 0) + (come or 0),
                yhat=float(point["yhat"]),
                lower=float(point["yhat_lower"]),
                upper=float(point["yhat_upper"]),
            )
        )
    return out


def lead_words(lead: int, freq: str) -> str:
    """`dans 24 h`, `dans 2 jours`."""
    if freq.lower() == "h":
        return _("dans {n} h", n=lead)
    return _("dans {n} jour", n=lead) if lead == 1 else _("dans {n} jours", n=lead)


def band_chart(
    history: pd.DataFrame,
    forecast: queries.UnitForecast | None,
    capacity: float | None,
    at: datetime,
    tz: str,
) -> alt.LayerChart | alt.FacetChart:
    """The occupancy observed (black steps), the forecast's central line (dashed) and interval
    (shaded), the capacity (red) and the present (grey)."""
    observed, predicted = _("Observé"), _("Prévision")
    lines = [pd.DataFrame({"local": local(history["hour"], tz), "beds": history["occupancy"]})]
    lines[0]["series"] = observed
    if forecast is not None:
        points = forecast.points
        lines.append(
            pd.DataFrame(
                {"local": local(points["ds"], tz), "beds": points["yhat"], "series": predicted}
            )
        )
    data = pd.concat([frame for frame in lines if not frame.empty] or lines, ignore_index=True)
    hour_axis = alt.Axis(format="%d/%m %Hh", labelAngle=-45)
    beds = _("Lits occupés")
    layers: list[alt.Chart] = []
    if forecast is not None:
        band = pd.DataFrame(
            {
                "local": local(forecast.points["ds"], tz),
                "lower": forecast.points["yhat_lower"],
                "upper": forecast.points["yhat_upper"],
            }
        )
        interval = _("Intervalle à {p}", p=percent(forecast.coverage))
        layers.append(
            alt.Chart(band)
            .mark_area(opacity=0.25, color="#1f77b4")
            .encode(
                x=alt.X("local:T", title=_("Heure"), axis=hour_axis),
                y=alt.Y("lower:Q", title=beds),
                y2="upper:Q",
                tooltip=[
                    alt.Tooltip("local:T", title=_("Heure"), format="%d/%m/%Y %H:%M"),
                    alt.Tooltip("lower:Q", title=interval + " – " + _("bas"), format=".0f"),
                    alt.Tooltip("upper:Q", title=interval + " – " + _("haut"), format=".0f"),
                ],
            )
        )
    layers.append(
        alt.Chart(data)
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("local:T", title=_("Heure"), axis=hour_axis),
            y=alt.Y("beds:Q", title=beds),
            color=alt.Color(
                "series:N",
                title=None,
                scale=alt.Scale(domain=[observed, predicted], range=["#212121", "#1f77b4"]),
                legend=alt.Legend(orient="top"),
            ),
            strokeDash=alt.StrokeDash(
                "series:N",
                scale=alt.Scale(domain=[observed, predicted], range=[[1, 0], [6, 3]]),
                legend=None,
            ),
            tooltip=[
                alt.Tooltip("series:N", title=_("Série")),
                alt.Tooltip("local:T", title=_("Heure"), format="%d/%m/%Y %H:%M"),
                alt.Tooltip("beds:Q", title=beds, format=".0f"),
            ],
        )
    )
    if capacity is not None and pd.notna(capacity):
        layers.append(
            alt.Chart(pd.DataFrame({"capacity": [float(capacity)]}))
            .mark_rule(color="#c62828", strokeDash=[6, 4])
            .encode(y="capacity:Q", tooltip=[alt.Tooltip("capacity:Q", title=_("Capacité"))])
        )
    present = pd.DataFrame({"local": local(pd.Series([at]), tz), "label": [_("maintenant")]})
    rule = alt.Chart(present).encode(x="local:T")
    layers.append(rule.mark_rule(color="#757575"))
    layers.append(
        rule.mark_text(align="left", dx=4, dy=-6, color="#757575").encode(
            text="label:N", y=alt.value(24)
        )
    )
    return alt.layer(*layers).properties(height=280)


def breakdown_table(forecast: queries.UnitForecast, rows: list[Term]) -> pd.DataFrame:
    """The breakdown as a table written for people."""
    shown_stock_flow = forecast.terms_model not in (None, forecast.model)
    table: dict[str, list[str]] = {
        _("Échéance"): [lead_words(r.lead, forecast.freq) for r in rows],
        _("Heure"): [when(r.ds) for r in rows],
        _("Présents maintenant"): [number(r.now) for r in rows],
        _("Sorties attendues"): [
            "−" + number(r.departures) if r.departures is not None else number(None) for r in rows
        ],
        _("Admissions attendues"): [
            "+" + number(r.admissions) if r.admissions is not None else number(None) for r in rows
        ],
    }
    if shown_stock_flow:
        table[_("Total stock–flux")] = [number(r.stock_flow) for r in rows]
    table[_("Prévision (lits occupés)")] = [number(r.yhat) for r in rows]
    table[_("Intervalle à {p}", p=percent(forecast.coverage))] = [
        f"{number(r.lower)} – {number(r.upper)}" for r in rows
    ]
    return pd.DataFrame(table)


def show(level: str, unit: str, name: str, occupied: float | None, capacity: float | None) -> None:
    """The outlook of one unit of the drill-down: metrics, band chart and breakdown."""
    at = now()
    tz = settings().timezone
    forecast = queries.unit_forecast(engine(), unit)
    if forecast is not None and forecast.capacity is not None and capacity is None:
        capacity = forecast.capacity
    st.subheader(_("{name} : occupation et prévision", name=name))
    if forecast is None:
        st.info(
            _(
                "Pas encore de prévision pour {name}. Le prévisionniste (`parcours forecast run "
                "--every 600`, que `parcours demo` lance) en calcule une pour chaque "
                "établissement, service et unité dès que l'occupation horaire couvre 9 jours "
                "(trois fois l'horizon de 72 h). Vérifiez qu'il tourne, puis revenez sur cette "
                "page ; en attendant, voici l'occupation observée.",
                name=name,
            )
        )
        since = at - HISTORY
    else:
        origin = pd.Timestamp(forecast.history_end).to_pydatetime()
        since = min(at, origin) - HISTORY
        age = at - origin
        last = pd.Timestamp(forecast.points["ds"].iloc[-1]).to_pydatetime()
        if last < at:
            st.warning(
                _(
                    "La dernière prévision de {name} part des données du {at} et ne couvre plus "
                    "les heures à venir. Vérifiez que le prévisionniste tourne (`parcours "
                    "forecast run --every 600`) et que les flux arrivent (page État des flux).",
                    name=name,
                    at=when(origin),
                )
            )
        elif age > STALE_FORECAST:
            st.warning(
                _(
                    "Cette prévision part des données du {at} : elle ignore ce qui s'est passé "
                    "depuis. Vérifiez que le prévisionniste tourne (`parcours forecast run "
                    "--every 600`).",
                    at=when(origin),
                )
            )
    metrics(forecast, occupied, capacity, at, tz)
    history = queries.occupancy_trend(engine(), level, unit, since)
    if history.empty and forecast is None:
        st.caption(_("Pas encore d'historique horaire."))
        return
    chart(band_chart(history, forecast, capacity, at, tz))
    if forecast is None:
        return
    st.caption(
        _(
            "Trait noir : lits occupés observés. Tiretés bleus : prévision du modèle retenu "
            "({model}) ; zone bleue : son intervalle à {p}, où la valeur observée devrait tomber "
            "{p} du temps. Ligne rouge : capacité. Prévision calculée sur les données arrêtées "
            "au {at}.",
            model=_(model_label(forecast.model)),
            p=percent(forecast.coverage),
            at=when(forecast.history_end),
        )
    )
    rows = breakdown(forecast)
    st.markdown("**" + _("De quoi la prévision est faite") + "**")
    first = rows[0]
    if first.now is not None:
        st.markdown(
            _(
                "{lead} : {now} patients présents maintenant, −{gone} sorties attendues, +{come} "
                "admissions attendues → {total} lits occupés.",
                lead=lead_words(first.lead, forecast.freq).capitalize(),
                now=number(first.now),
                gone=number(first.departures),
                come=number(first.admissions),
                total=number(first.stock_flow),
            )
        )
        if forecast.terms_model != forecast.model:
            st.caption(
                _(
                    "Décomposition du modèle stock–flux ; la prévision retenue ({model}) donne "
                    "{yhat} lits.",
                    model=_(model_label(forecast.model)),
                    yhat=number(first.yhat),
                )
            )
    else:
        st.caption(
            _(
                "Le modèle retenu ({model}) ne se décompose pas en présents, sorties et "
                "admissions, et aucun modèle stock–flux n'a été calculé pour cette unité.",
                model=_(model_label(forecast.model)),
            )
        )
    st.dataframe(breakdown_table(forecast, rows), hide_index=True, width="stretch")


def metrics(
    forecast: queries.UnitForecast | None,
    occupied: float | None,
    capacity: float | None,
    at: datetime,
    tz: str,
) -> None:
    """Beds free now, departures expected by midnight, and the forecast a day and three ahead."""
    cols = st.columns(4)
    free = None
    if capacity is not None and pd.notna(capacity) and occupied is not None:
        free = float(capacity) - float(occupied)
    cols[0].metric(_("Lits libres maintenant"), number(free))
    gone = (
        queries.departures_between(forecast.terms, at, end_of_day(at, tz))
        if forecast is not None
        else None
    )
    cols[1].metric(
        _("Sorties attendues d'ici minuit"),
        number(gone),
        help=_(
            "Patients présents dont la sortie est attendue avant minuit, selon la prévision "
            "stock–flux ; un tiret quand aucune prévision à jour ne le dit."
        ),
    )
    if forecast is None:
        return
    rows = breakdown(forecast)
    for col, row in zip(cols[2:], (rows[0], rows[-1]) if len(rows) > 1 else rows, strict=False):
        delta = row.yhat - float(occupied) if occupied is not None else None
        col.metric(
            _("Prévision {lead}", lead=lead_words(row.lead, forecast.freq)),
            _("{n} lits", n=number(row.yhat)),
            delta=None if delta is None else _("{d} par rapport à maintenant", d=signed(delta)),
            delta_color="inverse",
            help=_(
                "Intervalle à {p} : {low} – {high}",
                p=percent(forecast.coverage),
                low=number(row.lower),
                high=number(row.upper),
            ),
        )


def signed(value: float) -> str:
    """`+3`, `-2`, `0`: an ASCII minus, from which `st.metric` draws its arrow."""
    rounded = round(value)
    if rounded > 0:
        return "+" + number(rounded)
    return "-" + number(-rounded) if rounded < 0 else number(0)
