"""One patient's pathway between the community and the hospital."""

from __future__ import annotations

import streamlit as st

from dashboard import queries
from dashboard.common import engine, local_time

st.title("Pathways")
totals = queries.pathway_totals(engine())
c1, c2, c3, c4 = st.columns(4)
c1.metric("Patients", totals["patients"] or 0)
c2.metric("Inpatient stays", totals["stays"] or 0)
c3.metric("ED visits", totals["ed_visits"] or 0)
mean_los = totals["mean_los_hours"]
c4.metric("Mean length of stay", f"{mean_los / 24:.1f} d" if mean_los else "—")

search = st.text_input("Patient id contains", key="patient_search")
patients = queries.find_patients(engine(), search)
if not patients:
    st.info("No patient matches. Pathways appear once the stream worker has seen their events.")
    st.stop()
patient = st.selectbox("Patient", patients, key="patient_choice")
path = queries.patient_pathway(engine(), patient)
st.subheader(f"Patient {path.patient_id}")
st.write(f"Current stage: **{path.stage or 'unknown'}**")

sections = [
    ("Inpatient stays", path.stays, ("admitted_at", "discharged_at")),
    ("Wards and beds", path.locations, ("start_at", "end_at")),
    ("Emergency visits", path.ed_visits, ("arrived_at", "departed_at")),
    ("Community visits", path.community_visits, ("start_at",)),
    ("Referrals", path.referrals, ("authored_at",)),
    ("Alerts", path.alerts, ("raised_at", "resolved_at")),
]
for title, frame, times in sections:
    st.markdown(f"**{title}** ({len(frame)})")
    if frame.empty:
        st.caption("None.")
    else:
        st.dataframe(local_time(frame, *times), hide_index=True, use_container_width=True)
