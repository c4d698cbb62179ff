"""Prévisions de lits : la prévision retenue par le backtest, son éventail, sa décomposition
stock–flux et sa précision passée, en mots."""

from __future__ import annotations

from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import queries
from dashboard.common import _, chart, engine, lang, local_time, when
from dashboard.forecast_text import (
    DAILY_HISTORY_DAYS,
    LEVEL_LABELS,
    STITCHED,
    accuracy_sentence,
    band_runs,
    bands_sentence,
    coverage_sentence,
    lead_phrase,
    mase_sentence,
    model_label,
    number,
    percent,
    terms_sentence,
)

L = lang()
st.title(_("Prévisions"))
st.caption(
    _(
        "Chaque série est prévue par plusieurs modèles ; un backtest sur l'historique récent, "
        "que les modèles n'avaient pas vu, retient le plus précis. L'intervalle est calibré sur "
        "les erreurs de ce backtest."
    )
)

VIEWS = {"hourly": "occupancy", "daily": "occupancy_daily"}
view = st.radio(
    _("Pas de temps"),
    list(VIEWS),
    format_func=lambda v: _("Horaire, 72 h") if v == "hourly" else _("Journalier, 14 jours"),
    horizontal=True,
    key="forecast_view",
)
metric = VIEWS[view]
by_metric = {m: queries.forecast_series(engine(), m) for m in VIEWS.values()}
# Every series of either step, so that a unit keeps its place when the step changes.
series = (
    pd.concat([f for f in by_metric.values() if not f.empty])
    if any(not f.empty for f in by_metric.values())
    else by_metric["occupancy"]
)
if series.empty:
    st.info(
        _(
            "Aucune prévision pour l'instant. Elles apparaissent au premier passage du "
            "prévisionniste (`parcours forecast run`), dès que le recensement a quelques jours "
            "d'historique."
        )
    )
    st.stop()
series = series.drop_duplicates("unit_id")

levels = [
    lv for lv in ("hospital", "service", "ward", "departement") if lv in set(series["unit_type"])
]
others = sorted(set(series["unit_type"].dropna()) - set(levels))
levels += others
if series["unit_type"].isna().any():
    levels.append("")
level = st.radio(
    _("Niveau"),
    levels,
    format_func=lambda lv: _(LEVEL_LABELS[lv]) if lv in LEVEL_LABELS else lv or _("Autres séries"),
    horizontal=True,
    key="forecast_level",
)
mine = series[series["unit_type"].fillna("") == level]
names = dict(zip(mine["unit_id"], mine["name"], strict=True))
unit = st.selectbox(_("Série"), list(names), format_func=lambda u: names[u], key="forecast_unit")
rows = by_metric[metric]
rows = rows[rows["unit_id"] == unit] if not rows.empty else rows
if rows.empty:
    if view == "hourly":
        st.info(_("Pas de prévision horaire pour cette série."))
        st.stop()
    hourly_rows = by_metric["occupancy"]
    hourly_rows = (
        hourly_rows[hourly_rows["unit_id"] == unit] if not hourly_rows.empty else hourly_rows
    )
    days = int(hourly_rows["history_points"].iloc[0]) // 24 if not hourly_rows.empty else None
    reason = _(
        "Pas encore de prévision journalière pour cette série : il faut {need} jours entiers de "
        "recensement, {learn} pour apprendre et {score} pour vérifier la prévision sur des jours "
        "que le modèle n'a pas vus.",
        need=DAILY_HISTORY_DAYS,
        learn=DAILY_HISTORY_DAYS // 2,
        score=DAILY_HISTORY_DAYS // 2,
    )
    if days is not None and days < DAILY_HISTORY_DAYS:
        reason += " " + _("Elle en a {n} pour l'instant.", n=days)
    else:
        reason += " " + _("Elle apparaîtra au prochain passage du prévisionniste.")
    st.info(reason)
    st.stop()
row = rows.iloc[0]
freq = str(row["freq"])
hourly = freq.lower() == "h"
selected = str(row["selected_model"])
target = float(row["target_coverage"])

frame = local_time(queries.forecast(engine(), unit, metric), "ds", "run_at", "history_end")
accuracy = queries.forecast_accuracy(engine(), unit, metric)
terms = local_time(queries.forecast_terms(engine(), unit, metric), "ds")
# Where the bands of leads chose different models, the published forecast is the stitched one:
# it stands in for the selected model's own, and a sentence says which model serves which band.
stitched = frame[frame["model"].str.startswith(STITCHED)].sort_values("ds")
runs = band_runs([m.removeprefix(STITCHED) for m in stitched["model"]])
if not stitched.empty:
    frame = pd.concat(
        [frame[frame["model"] != selected], stitched.assign(model=selected)], ignore_index=True
    )
chosen = frame[frame["model"] == selected]
if chosen.empty:
    st.warning(
        _("La prévision du modèle retenu n'est pas encore écrite ; réessayez dans un instant.")
    )
    st.stop()

lead = min(24 if hourly else 7, len(chosen))
# The leads whose backtest error is told in words: a day ahead, and a week for daily series.
leads = [min(24, len(chosen))] if hourly else [n for n in (1, 7) if n <= len(chosen)]
at_lead = chosen.iloc[lead - 1]
st.subheader(_("Modèle retenu : {model}", model=model_label(selected, L)))
if len(runs) > 1:
    st.markdown(bands_sentence(runs, freq, L))
cols = st.columns(3)
cols[0].metric(
    _("Prévision {lead}", lead=lead_phrase(lead, freq, L)),
    _("{n} lits", n=number(at_lead["yhat"], 0, L)),
    help=_("Valeur centrale de la prévision retenue."),
)
cols[1].metric(
    _("Intervalle à {p}", p=percent(target, L)),
    f"{number(at_lead['yhat_lower'], 0, L)} – {number(at_lead['yhat_upper'], 0, L)}",
)
if pd.notna(row["capacity"]):
    cols[2].metric(_("Capacité"), _("{n} lits", n=number(row["capacity"], 0, L)))

sf_model = selected if selected in set(terms["model"]) else "stock_flow"
sf_terms = terms[terms["model"] == sf_model]
if len(sf_terms) >= lead:
    t = sf_terms.iloc[lead - 1]
    sf_yhat = frame[(frame["model"] == sf_model)]["yhat"]
    sentence = terms_sentence(
        lead,
        freq,
        t["now"],
        t["expected_discharges"],
        t["expected_admissions"],
        float(sf_yhat.iloc[lead - 1]) if len(sf_yhat) >= lead else t["now"],
        L,
    )
    if sf_model != selected:
        sentence += " " + _(
            "(décomposition du modèle stock–flux, qui n'est pas le modèle retenu ici)"
        )
    st.markdown(sentence)

# Fan chart: the recent history, then the selected forecast with its interval and the naive one.
# Times are naive local ones, so that the chart reads as the ward clock whatever the browser's zone,
# and the axis is written the French way (no "12 PM").
history_end = pd.Timestamp(row["history_end"])
axis = alt.Axis(format="%d/%m %Hh" if hourly else "%d/%m", labelAngle=-45)
layers: list[alt.Chart] = []
if level in ("hospital", "service", "ward"):
    if hourly:
        since = (history_end - timedelta(days=14)).to_pydatetime()
        hist = queries.census_history(engine(), level, unit, since=since)
        past = pd.DataFrame({"ds": pd.DatetimeIndex([], tz="UTC"), "y": []})
        if not hist.empty:
            hours = pd.date_range(
                pd.to_datetime(hist["hour"], utc=True).min(), history_end, freq="h"
            )
            occ = (
                hist.assign(hour=pd.to_datetime(hist["hour"], utc=True))
                .set_index("hour")["occupancy"]
                .reindex(hours, fill_value=0)
            )
            past = pd.DataFrame({"ds": hours, "y": occ.to_numpy()})
    else:
        # The census at the same midnights (UTC) as the daily forecast counts.
        since = (history_end - timedelta(days=28)).to_pydatetime()
        past = queries.census_at_midnight(engine(), level, unit, since, history_end.to_pydatetime())
    if not past.empty:
        past = local_time(past, "ds")
        past["ds"] = past["ds"].dt.tz_localize(None)
        layers.append(
            alt.Chart(past)
            .mark_line(color="black", point=not hourly)
            .encode(
                x=alt.X("ds:T", title=_("Heure") if hourly else _("Date"), axis=axis),
                y=alt.Y("y:Q", title=_("Lits occupés")),
            )
        )
shown = frame[frame["model"].isin([selected, "naive"])].copy()
shown["modèle"] = [model_label(m, L) for m in shown["model"]]
shown["ds"] = shown["ds"].dt.tz_localize(None)
band = (
    alt.Chart(shown[shown["model"] == selected])
    .mark_area(opacity=0.25, color="#1f77b4")
    .encode(
        x=alt.X("ds:T", title=_("Heure") if hourly else _("Date"), axis=axis),
        y=alt.Y("yhat_lower:Q", title=_("Lits occupés")),
        y2="yhat_upper:Q",
    )
)
line = (
    alt.Chart(shown)
    .mark_line()
    .encode(
        x="ds:T",
        y="yhat:Q",
        # Below the chart, in full: the models' names are long, and a cut one names none.
        color=alt.Color(
            "modèle:N",
            title=_("Prévision"),
            legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=600),
        ),
        strokeDash=alt.condition(alt.datum.model == "naive", alt.value([4, 4]), alt.value([1, 0])),
    )
)
chart(alt.layer(*layers, band, line))
st.caption(
    _(
        "Zone ombrée : intervalle de prévision à {p} du modèle retenu. Dernière donnée : {end} ; "
        "calculée le {run}.",
        p=percent(target, L),
        end=when(chosen["history_end"].iloc[0]),
        run=when(chosen["run_at"].iloc[0]),
    )
)
if not hourly:
    st.caption(
        _(
            "Un point par jour : les patients présents à minuit UTC, soit {hour} heure locale.",
            hour=when(chosen["history_end"].iloc[0], with_date=False),
        )
    )

st.subheader(_("Précision passée"))
if accuracy.empty:
    st.write(_("Pas encore de backtest pour cette série."))
    st.stop()
by_model = accuracy.set_index("model")
window_days = (pd.Timestamp(row["window_end"]) - pd.Timestamp(row["window_start"])) / timedelta(
    days=1
)


def mae_at(model: str, lead: int) -> float | None:
    """The backtest MAE of `model` at `lead` (all leads if not stored per lead)."""
    if model not in by_model.index:
        return None
    by_lead = by_model.at[model, "mae_by_lead"]
    if isinstance(by_lead, list) and len(by_lead) >= lead:
        return float(by_lead[lead - 1])
    return float(by_model.at[model, "mae"])


if selected in by_model.index:
    for n in leads:
        sel_mae = mae_at(selected, n)
        if sel_mae is not None:
            st.markdown(accuracy_sentence(window_days, n, freq, sel_mae, mae_at("naive", n), L))
    sel = by_model.loc[selected]
    if pd.notna(sel["mase"]):
        st.markdown(mase_sentence(float(sel["mase"]), freq, L))
    st.markdown(coverage_sentence(float(sel["coverage"]), target, L))
rule = _(
    "Le modèle retenu est le stock–flux (ou la prévision naïve sans flux), sauf si un autre "
    "modèle fait mieux, nettement et régulièrement, sur ces origines."
)
if hourly:
    backtest = _(
        "Backtest : {folds} origines successives, chaque fois {horizon} heures prévues sans voir "
        "la suite.",
        folds=int(row["folds"]),
        horizon=int(row["horizon"]),
    )
else:
    backtest = _(
        "Backtest : {folds} origines successives, chaque fois {horizon} jours prévus sans voir "
        "la suite.",
        folds=int(row["folds"]),
        horizon=int(row["horizon"]),
    )
backtest += " " + rule
st.caption(backtest)
retained = _("(retenu)")
# Short headings, so that the seven columns fit beside the sidebar; each says the rest on hover.
errors = {
    _("Erreur {lead}", lead=lead_phrase(n, freq, L)): (
        [number(mae_at(m, n), 1, L) for m in accuracy["model"]],
        _(
            "Écart moyen, en lits, entre la prévision {lead} et ce qui a été observé.",
            lead=lead_phrase(n, freq, L),
        ),
    )
    for n in leads
}
columns: dict[str, tuple[list[str], str | None]] = {
    _("Modèle"): (
        [model_label(m, L) + (f" {retained}" if m == selected else "") for m in accuracy["model"]],
        None,
    ),
    **errors,
    _("Erreur moyenne"): (
        [number(v, 1, L) for v in accuracy["mae"]],
        _("Écart moyen, en lits, sur tous les horizons prévus."),
    ),
    "RMSE": (
        [number(v, 1, L) for v in accuracy["rmse"]],
        _("Racine de l'écart quadratique moyen, en lits : les grosses erreurs y pèsent plus."),
    ),
    "MASE": (
        [number(v, 2, L) for v in accuracy["mase"]],
        _("Écart moyen rapporté à celui de la prévision naïve : sous 1, le modèle fait mieux."),
    ),
    _("Couverture {p}", p=percent(target, L)): (
        [percent(v, L) for v in accuracy["coverage"]],
        _("Part des valeurs observées tombées dans l'intervalle à {p}.", p=percent(target, L)),
    ),
}
table = pd.DataFrame({name: values for name, (values, _help) in columns.items()})
# Every model's row at once (one per candidate, about ten): Streamlit's default height stops at ten
# rows and scrolls the rest, and a row out of sight is a model nobody compares.
st.dataframe(
    table,
    hide_index=True,
    height="content",
    column_config={
        name: st.column_config.TextColumn(name, help=text)
        for name, (_values, text) in columns.items()
        if text
    },
)
st.caption(_("Erreurs en lits ; survolez le titre d'une colonne pour ce qu'elle mesure."))
