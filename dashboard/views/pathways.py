"""One patient's pathway between the community and the hospital."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import queries
from dashboard.common import engine, local_time, settings
from parcours.timeutil import format_local
from streams import read

NOT_YET_KNOWN = "pas encore connu (not yet known)"

st.title("Pathways")
totals = read.summary(engine())
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Patients", totals["patients"])
c2.metric("Inpatient stays", totals["stays"])
c3.metric("ED visits", totals["ed_visits"])
c4.metric("Community visits", totals["community_visits"])
median_los = totals["los_hours_median"]
c5.metric("Median length of stay", f"{median_los / 24:.1f} d" if median_los else "—")

search = st.text_input("Patient id contains", key="patient_search")
patients = queries.find_patients(engine(), search)
if not patients:
    st.info("No patient matches. Pathways appear once the stream worker has seen their events.")
    st.stop()
patient = st.selectbox("Patient", patients, key="patient_choice")
path = read.pathway(engine(), patient)
if path is None:
    st.warning("This patient's pathway is no longer stored; search again.")
    st.stop()
st.subheader(f"Patient {path['patient_id']}")
since = format_local(path["stage_since"], settings().timezone)
st.markdown(f"Current stage: **{path['stage'] or 'unknown'}** since {since}")

stays = pd.DataFrame([{k: v for k, v in s.items() if k != "locations"} for s in path["stays"]])
places = pd.DataFrame(
    [
        {
            "stay_id": s["stay_id"],
            **{k: v for k, v in place.items() if k != "location_known"},
            "place": place["location_id"] if place["location_known"] else NOT_YET_KNOWN,
        }
        for s in path["stays"]
        for place in s["locations"]
    ]
)
sections = [
    ("Inpatient stays", stays, ("admitted_at", "discharged_at")),
    ("Wards and beds", places, ("start_at", "end_at")),
    ("Emergency visits", pd.DataFrame(path["ed_visits"]), ("arrived_at", "departed_at")),
    ("Community visits", pd.DataFrame(path["community_visits"]), ("start_at", "end_at")),
    ("Referrals", pd.DataFrame(path["referrals"]), ("authored_at",)),
    ("Open alerts", pd.DataFrame(path["open_alerts"]), ("raised_at",)),
]
for title, frame, times in sections:
    st.markdown(f"**{title}** ({len(frame)})")
    if frame.empty:
        st.caption("None.")
    else:
        st.dataframe(local_time(frame, *times), hide_index=True, use_container_width=True)
