"""Alertes: what needs a care coordinator now, and its acknowledgement under the signed-in name."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import queries
from dashboard.accounts import Role
from dashboard.common import (
    REFRESH,
    Col,
    _,
    engine,
    lang,
    now,
    number,
    require,
    settings,
    table,
    word,
)
from dashboard.common import hospital_names as known_hospitals
from dashboard.common import places as known_places
from dashboard.i18n import whens
from dashboard.labels import ALERT_STATUS, ALERT_TYPES

user = require(Role.COORDINATOR, Role.ADMIN)
st.title(_("Alertes"))
st.caption(
    _(
        "Les alertes sont des suggestions : un soignant vérifie chacune. L'acquittement "
        "enregistre votre nom et l'heure dans le journal. Une alerte se résout d'elle-même "
        "quand sa cause disparaît."
    )
)
col1, col2, col3 = st.columns([2, 2, 1])
status = col1.selectbox(
    _("Statut"),
    ["open", "resolved", ""],
    format_func=lambda s: _(ALERT_STATUS[s]) if s else _("Tous"),
    key="alert_status",
)
kind = col2.selectbox(
    _("Type"),
    ["", *ALERT_TYPES],
    format_func=lambda k: _(ALERT_TYPES[k]) if k else _("Tous les types"),
    key="alert_kind",
)
todo = col3.checkbox(_("Non acquittées seulement"), value=False, key="alert_todo")


def described(frame: pd.DataFrame) -> pd.DataFrame:
    """The alert rows with their type and status in words and their place by name."""
    places = known_places().set_index("ward_id")
    names = known_hospitals()
    return frame.assign(
        type=frame["alert_type"].map(lambda k: word(ALERT_TYPES, k)),
        state=frame["status"].map(lambda s: word(ALERT_STATUS, s)),
        place=[
            places["ward"].get(u) or names.get(u) or u if isinstance(u, str) else None
            for u in frame["unit_id"]
        ],
    )


def my_units() -> list[str]:
    """The hospitals a coordinator follows and their wards (empty: every unit)."""
    if not user.hospitals:
        return []
    places = known_places()
    wards = places.loc[places["hospital_id"].isin(list(user.hospitals)), "ward_id"]
    return [*user.hospitals, *wards]


units = my_units()


@st.fragment(run_every=REFRESH)
def worklist() -> None:
    """The live list."""
    frame = queries.alerts(engine(), status or None, kind or None, todo, units)
    total = queries.count_alerts(engine(), status or None, kind or None, todo, units)
    st.metric(_("Alertes"), number(total))
    if total > len(frame):
        st.caption(
            _(
                "Les {n} plus récentes sont listées ; choisissez un type pour affiner.",
                n=number(len(frame)),
            )
        )
    if frame.empty:
        st.success(_("Rien à traiter pour ce filtre."))
        return
    table(
        described(frame),
        [
            Col("type", "Type"),
            Col("patient_id", "Patient"),
            Col("place", "Lieu"),
            Col("raised_at", "Levée le", "time"),
            Col("state", "Statut"),
            Col("resolved_at", "Résolue le", "time"),
            Col("acknowledged_by", "Acquittée par"),
            Col("acknowledged_at", "Acquittée le", "time"),
        ],
    )


worklist()

st.subheader(_("Acquitter une alerte"))
open_unacked = queries.alerts(engine(), "open", kind or None, True, units)
if open_unacked.empty:
    st.write(_("Toutes les alertes ouvertes sont acquittées."))
else:
    choices = described(open_unacked)
    raised = whens(lang(), choices["raised_at"], settings().timezone)
    labels = {
        aid: " · ".join(
            str(p)
            for p in (kind_word, _("patient {p}", p=patient), place, at)
            if p is not None and p == p
        )
        for aid, kind_word, patient, place, at in zip(
            choices["alert_id"],
            choices["type"],
            choices["patient_id"],
            choices["place"],
            raised,
            strict=True,
        )
    }

    def label(alert_id: str) -> str:
        return labels.get(alert_id, alert_id)

    with st.form("acknowledge"):
        choice = st.selectbox(_("Alerte"), list(labels), format_func=label, key="ack_choice")
        note = st.text_input(_("Note (facultative)"), key="ack_note")
        st.caption(_("Acquittée au nom de {user}.", user=user.username))
        if st.form_submit_button(_("Acquitter")):
            if queries.acknowledge_alert(
                engine(), choice, user.username, now(), note or None, user.role.value
            ):
                st.success(_("Alerte acquittée par {user}.", user=user.username))
            else:
                st.warning(_("Quelqu'un a déjà acquitté cette alerte ; la liste est mise à jour."))
