"""Indicateurs du parcours: territory totals for managers, with no patient named."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import queries
from dashboard.accounts import Role
from dashboard.common import _, chart, engine, now, number, require, word
from dashboard.labels import ALERT_TYPES
from dashboard.views.shared import stale_warning

require(Role.MANAGER, Role.ADMIN)
st.title(_("Indicateurs du parcours"))
stale_warning(now())


@st.cache_data(ttl=60, show_spinner=False)
def totals_now() -> dict[str, Any]:
    """The territory's totals, counted at most once a minute (they move slowly)."""
    return queries.pathway_totals(engine())


totals = totals_now()
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric(_("Patients suivis"), number(totals["patients"]))
c2.metric(_("Séjours"), number(totals["stays"]))
c3.metric(_("Hospitalisés maintenant"), number(totals["open_stays"]))
c4.metric(_("Passages aux urgences"), number(totals["ed_visits"]))
median = totals["los_hours_median"]
c5.metric(_("Durée médiane de séjour"), _("{n} j", n=number(median / 24, 1)) if median else "—")

st.subheader(_("Alertes ouvertes par type"))
counts = pd.DataFrame(
    [{"type": word(ALERT_TYPES, kind), "n": n} for kind, n in totals["open_alerts"].items()]
)
if counts.empty:
    st.caption(_("Aucune alerte ouverte."))
else:
    chart(
        alt.Chart(counts)
        .mark_bar()
        .encode(
            y=alt.Y("type:N", sort="-x", title=None, axis=alt.Axis(labelLimit=320)),
            # A count: whole numbers on the axis, however few the alerts.
            x=alt.X("n:Q", title=_("Alertes ouvertes"), axis=alt.Axis(format="d", tickMinStep=1)),
            tooltip=[
                alt.Tooltip("type:N", title=_("Type")),
                alt.Tooltip("n:Q", title=_("Alertes ouvertes")),
            ],
        )
    )
