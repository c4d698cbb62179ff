"""Listes de travail: who needs a coordinator now. Each row opens the patient's pathway."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from dashboard import queries
from dashboard.accounts import Role
from dashboard.common import (
    Col,
    _,
    _n,
    engine,
    now,
    open_patient,
    require,
    selected_row,
    settings,
    table,
    word,
)
from dashboard.common import hospital_names as known_hospitals
from dashboard.common import places as known_places
from dashboard.labels import ALERT_STATUS

user = require(Role.COORDINATOR, Role.ADMIN)
st.title(_("Listes de travail"))
st.caption(_("Cliquez sur une ligne pour ouvrir le parcours du patient (l'ouverture est tracée)."))

places = known_places()
hospital_names = known_hospitals()
mine = list(user.hospitals) or list(hospital_names)
f1, f2 = st.columns(2)
chosen_hospitals = f1.multiselect(
    _("Établissements"),
    mine,
    format_func=lambda h: hospital_names.get(h, h),
    key="wl_hospitals",
    placeholder=_("Tous mes établissements"),
)
hospitals = chosen_hospitals or list(user.hospitals)
service_options = places[places["hospital_id"].isin(hospitals or mine)]
service_names = dict(zip(service_options["service_id"], service_options["service"], strict=True))
services = f2.multiselect(
    _("Services"),
    sorted(s for s in service_names if s),
    format_func=lambda s: (
        f"{service_names.get(s) or s} · {hospital_names.get(s.rsplit('/', 1)[0], '')}"
    ),
    key="wl_services",
    placeholder=_("Tous les services"),
)


def with_places(frame: pd.DataFrame, ward_col: str | None = None) -> pd.DataFrame:
    """Add hospital, service and ward names; keep the rows of the chosen services."""
    if frame.empty:
        return frame.assign(hospital="", service="", ward="")
    if ward_col is None:
        wards = queries.last_wards(engine(), frame["stay_id"].dropna().tolist())
        frame = frame.assign(ward_id=frame["stay_id"].map(wards))
        ward_col = "ward_id"
    by_ward = places.set_index("ward_id")
    frame = frame.assign(
        hospital=frame["hospital_id"].map(lambda h: hospital_names.get(h, h)),
        ward=frame[ward_col].map(by_ward["ward"]),
        service=frame[ward_col].map(by_ward["service"]),
        service_id=frame[ward_col].map(by_ward["service_id"]),
    )
    if services:
        frame = frame[frame["service_id"].isin(services)]
    return frame.reset_index(drop=True)


def worklist(frame: pd.DataFrame, columns: list[Col], key: str, empty: str) -> None:
    """The list, and the patient whose row is clicked opened."""
    st.caption(_n("{n} patient", "{n} patients", len(frame)))
    if frame.empty:
        st.success(_(empty))
        return
    picked = selected_row(table(frame, columns, key=key))
    if picked is not None:
        open_patient(str(frame["patient_id"].iloc[picked]))


at = now()
rules = settings()
ed = with_places(
    queries.ed_now(engine(), at, timedelta(hours=rules.alert_ed_boarding_hours), hospitals),
    "ward_id",
)
gone = with_places(
    queries.discharged_without_follow_up(
        engine(), at, timedelta(days=rules.alert_readmission_days), hospitals
    )
)
back = with_places(
    queries.readmissions(
        engine(),
        at,
        timedelta(days=rules.alert_readmission_days),
        hospitals,
        [*hospitals, *places.loc[places["hospital_id"].isin(hospitals), "ward_id"]]
        if hospitals
        else [],
    )
)
long = with_places(
    queries.long_stays(engine(), at, timedelta(days=rules.alert_los_p90_default_days), hospitals)
)


def count(frame: pd.DataFrame) -> str:
    """The list's length; "500+" when the list stops at its limit (the oldest come first)."""
    return f"{queries.WORKLIST_LIMIT}+" if len(frame) >= queries.WORKLIST_LIMIT else str(len(frame))


tabs = st.tabs(
    [
        _("Aux urgences ({n})", n=count(ed)),
        _("Sortis sans suivi ({n})", n=count(gone)),
        _("Réhospitalisés à 30 jours ({n})", n=count(back)),
        _("Séjours longs ({n})", n=count(long)),
    ]
)
PATIENT = Col("patient_id", "Patient")
HOSPITAL = Col("hospital", "Établissement")
SERVICE = Col("service", "Service")
with tabs[0]:
    worklist(
        ed,
        [
            PATIENT,
            HOSPITAL,
            Col("arrived_at", "Arrivée", "time"),
            Col("waiting_hours", "Attente", "hours"),
            Col("boarding", "En attente d'un lit", "bool"),
            Col("admitted", "Hospitalisation décidée", "bool"),
        ],
        "wl_ed",
        "Personne aux urgences actuellement.",
    )
with tabs[1]:
    worklist(
        gone,
        [
            PATIENT,
            HOSPITAL,
            SERVICE,
            Col("ward", "Dernière unité"),
            Col("discharged_at", "Sortie", "time"),
            Col("days_since", "Jours depuis la sortie", "float"),
        ],
        "wl_no_follow_up",
        "Tous les patients sortis ont été revus en ville.",
    )
with tabs[2]:
    back = back.assign(status=back["status"].map(lambda s: word(ALERT_STATUS, s)))
    worklist(
        back,
        [
            PATIENT,
            HOSPITAL,
            SERVICE,
            Col("admitted_at", "Réadmission", "time"),
            Col("status", "Alerte"),
        ],
        "wl_readmitted",
        "Aucune réhospitalisation précoce sur 30 jours.",
    )
with tabs[3]:
    worklist(
        long,
        [
            PATIENT,
            HOSPITAL,
            SERVICE,
            Col("ward", "Unité"),
            Col("admitted_at", "Admission", "time"),
            Col("los_hours", "Durée de séjour", "hours"),
        ],
        "wl_long",
        "Aucun séjour long en cours.",
    )
