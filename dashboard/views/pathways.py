"""Parcours patient: one patient's pathway between the community and the hospital, as a
timeline in local time. Each opening is written to the access trail."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import accounts, queries
from dashboard.accounts import Role
from dashboard.common import Col, _, chart, engine, now, require, settings, table, when, word
from dashboard.common import hospital_names as known_hospitals
from dashboard.common import places as known_places
from dashboard.labels import ALERT_STATUS, ALERT_TYPES, STAGES
from streams import read

user = require(Role.COORDINATOR, Role.ADMIN)
st.title(_("Parcours patient"))

requested = st.session_state.pop("open_patient", None)
if requested:
    st.session_state["patient_search"] = ""
search = st.text_input(_("Rechercher un patient (identifiant)"), key="patient_search")
patients = queries.find_patients(engine(), search, hospital_ids=user.hospitals)
if requested:
    if requested not in patients:
        patients.insert(0, requested)
    st.session_state["patient_choice"] = requested
if not patients:
    st.info(
        _(
            "Aucun patient ne correspond. Un parcours apparaît quand le traitement des flux a vu "
            "ses événements."
        )
    )
    st.stop()
if st.session_state.get("patient_choice") not in patients:
    st.session_state.pop("patient_choice", None)
# Nothing is opened until someone picks a patient (or their search finds exactly one): every
# opening is traced, so none may happen by default.
patient = st.selectbox(
    _("Patient"),
    patients,
    index=0 if len(patients) == 1 else None,
    key="patient_choice",
    placeholder=_("Choisissez un patient"),
)
if patient is None:
    st.stop()
path = read.pathway(engine(), patient)
if path is None:
    st.warning(_("Ce parcours n'est plus disponible ; relancez la recherche."))
    st.stop()
if st.session_state.get("opened_patient") != patient:
    accounts.record_patient_view(engine(), user, patient)
    st.session_state["opened_patient"] = patient

st.subheader(_("Patient {p}", p=patient))
stage = path["stage"]
stage_words = word(STAGES, stage) or _("inconnue")
if path["stage_since"]:
    st.markdown(
        _(
            "Étape actuelle : **{stage}** depuis le {since}",
            stage=stage_words,
            since=when(path["stage_since"]),
        )
    )
else:
    st.markdown(_("Étape actuelle : **{stage}**", stage=stage_words))

tz = settings().timezone
place_names = known_places().set_index("ward_id")["ward"].to_dict()
hospital_names = known_hospitals()
alerts = queries.alert_history(engine(), patient)


def naive_local(value: Any) -> pd.Timestamp | None:
    """Local wall-clock time, naive: the chart shows it as read on the ward clock."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
    return stamp.tz_convert(tz).tz_localize(None)


end_now = naive_local(now())
bars: list[dict[str, Any]] = []
points: list[dict[str, Any]] = []


def bar(lane: str, start: Any, end: Any, label: str, kind: str) -> None:
    s, e = naive_local(start), naive_local(end)
    if s is None:
        return
    bars.append(
        {
            "lane": _(lane),
            "start": s,
            "end": e or end_now,
            "label": label,
            "kind": _(kind),
            "from": when(start),
            "to": when(end) if e is not None else _("en cours"),
        }
    )


def point(lane: str, at: Any, label: str, kind: str) -> None:
    t = naive_local(at)
    if t is not None:
        points.append(
            {"lane": _(lane), "start": t, "label": label, "kind": _(kind), "from": when(at)}
        )


for ref in path["referrals"]:
    point("Ville", ref["authored_at"], _("Adressage à l'hôpital"), "Adressage")
for visit in path["community_visits"]:
    bar(
        "Ville",
        visit["start_at"],
        visit["end_at"] or visit["start_at"],
        _("Consultation en ville"),
        "Ville",
    )
for visit in path["ed_visits"]:
    bar(
        "Urgences",
        visit["arrived_at"],
        visit["departed_at"],
        hospital_names.get(visit["hospital_id"], visit["hospital_id"] or ""),
        "Urgences",
    )
for stay in path["stays"]:
    bar(
        "Hospitalisation",
        stay["admitted_at"],
        stay["discharged_at"],
        hospital_names.get(stay["hospital_id"], stay["hospital_id"] or ""),
        "Séjour",
    )
    for place in stay["locations"]:
        ward = (
            place_names.get(place["ward_id"])
            or place["ward_id"]
            or (_("établissement") if place.get("location_known", True) else _("pas encore connu"))
        )
        bed = place["bed_id"].rsplit("/", 1)[-1] if place["bed_id"] else None
        bar(
            "Unité et lit",
            place["start_at"],
            place["end_at"],
            f"{ward} · {_('lit')} {bed}" if bed else ward,
            "Unité",
        )
    if stay["discharged_at"]:
        point("Hospitalisation", stay["discharged_at"], _("Sortie"), "Sortie")
        after = [
            v["start_at"]
            for v in path["community_visits"]
            if v["start_at"] and v["start_at"] >= stay["discharged_at"]
        ]
        bar(
            "Suivi après la sortie",
            stay["discharged_at"],
            min(after) if after else None,
            _("Revu en ville") if after else _("Pas encore revu en ville"),
            "Suivi" if after else "Sans suivi",
        )
for row in alerts.itertuples():
    label = word(ALERT_TYPES, row.alert_type) or ""
    point("Alertes", row.raised_at, label, "Alerte levée")
    if row.acknowledged_at is not None and not pd.isna(row.acknowledged_at):
        point(
            "Alertes",
            row.acknowledged_at,
            _("{a} acquittée par {u}", a=label, u=row.acknowledged_by),
            "Alerte acquittée",
        )

lanes = [
    _(x)
    for x in (
        "Ville",
        "Urgences",
        "Hospitalisation",
        "Unité et lit",
        "Suivi après la sortie",
        "Alertes",
    )
]
if bars or points:
    x = alt.X("start:T", title=_("Heure locale"), axis=alt.Axis(format="%d/%m/%Y %H:%M"))
    y = alt.Y("lane:N", sort=lanes, title=None)
    tooltip = [
        alt.Tooltip("label:N", title=_("Quoi")),
        alt.Tooltip("from:N", title=_("Début")),
    ]
    layers: list[alt.Chart] = []
    if bars:
        layers.append(
            alt.Chart(pd.DataFrame(bars))
            .mark_bar(height=18, cornerRadius=3)
            .encode(
                x=x,
                x2="end:T",
                y=y,
                color=alt.Color("kind:N", title=_("Étape")),
                tooltip=[*tooltip, alt.Tooltip("to:N", title=_("Fin"))],
            )
        )
    if points:
        layers.append(
            alt.Chart(pd.DataFrame(points))
            .mark_point(size=120, filled=True, shape="diamond")
            .encode(x=x, y=y, color=alt.Color("kind:N", title=_("Étape")), tooltip=tooltip)
        )
    chart(alt.layer(*layers).properties(height=300))
else:
    st.caption(_("Aucun événement daté pour ce patient."))

with st.expander(_("Le détail, en tableaux")):
    st.markdown(_("**Séjours**"))
    table(
        pd.DataFrame(path["stays"]),
        [
            Col("hospital_id", "Établissement"),
            Col("admitted_at", "Admission", "time"),
            Col("discharged_at", "Sortie", "time"),
            Col("los_hours", "Durée de séjour", "hours"),
            Col("disposition", "Mode de sortie"),
        ],
    )
    st.markdown(_("**Passages aux urgences**"))
    table(
        pd.DataFrame(path["ed_visits"]),
        [
            Col("hospital_id", "Établissement"),
            Col("arrived_at", "Arrivée", "time"),
            Col("departed_at", "Départ", "time"),
            Col("admitted", "Hospitalisé", "bool"),
        ],
    )
    st.markdown(_("**Alertes**"))
    table(
        alerts.assign(
            type=alerts["alert_type"].map(lambda k: word(ALERT_TYPES, k)),
            state=alerts["status"].map(lambda s: word(ALERT_STATUS, s)),
        ),
        [
            Col("type", "Type"),
            Col("raised_at", "Levée le", "time"),
            Col("state", "Statut"),
            Col("acknowledged_by", "Acquittée par"),
            Col("acknowledged_at", "Acquittée le", "time"),
        ],
    )
