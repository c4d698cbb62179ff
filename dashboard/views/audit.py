"""Journal des accès: who opened which patient's pathway, who signed in, who acknowledged what."""

from __future__ import annotations

import streamlit as st

from dashboard import accounts, queries
from dashboard.accounts import Role
from dashboard.common import Col, _, engine, require, role_label, table, word
from dashboard.labels import ACTIONS, ALERT_TYPES

require(Role.ADMIN)
st.title(_("Journal des accès"))
st.caption(
    _(
        "Chaque ouverture du parcours d'un patient, chaque connexion et chaque acquittement "
        "d'alerte, du plus récent au plus ancien."
    )
)
c1, c2 = st.columns(2)
who = c1.text_input(_("Utilisateur"), key="audit_user").strip()
patient = c2.text_input(_("Patient"), key="audit_patient").strip()

st.subheader(_("Consultations et connexions"))
trail = accounts.access_audit(engine(), who, patient)
table(
    trail.assign(
        what=trail["action"].map(lambda a: word(ACTIONS, a)),
        role_name=trail["role"].map(lambda r: role_label(r) if r else None),
    ),
    [
        Col("at", "Quand", "time"),
        Col("username", "Utilisateur"),
        Col("role_name", "Rôle"),
        Col("what", "Action"),
        Col("patient_id", "Patient"),
    ],
)

st.subheader(_("Acquittements d'alertes"))
acks = queries.acknowledgements(engine(), who)
if patient:
    acks = acks[acks["patient_id"] == patient]
table(
    acks.assign(
        type=acks["alert_type"].map(lambda k: word(ALERT_TYPES, k)),
        role_name=acks["role"].map(lambda r: role_label(r) if r else None),
    ),
    [
        Col("at", "Quand", "time"),
        Col("actor", "Utilisateur"),
        Col("role_name", "Rôle"),
        Col("type", "Alerte"),
        Col("patient_id", "Patient"),
        Col("note", "Note"),
    ],
)
