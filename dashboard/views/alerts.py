"""Alert worklist: what needs a care coordinator now, and who acknowledged what."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from dashboard import queries
from dashboard.common import REFRESH, engine, local_time

ALERT_TYPES = {
    "": "All types",
    "ed_boarding": "ED boarding",
    "referral_no_contact": "Referral without hospital contact",
    "no_followup": "No follow-up after discharge",
    "readmission": "Readmission",
    "long_stay": "Length of stay above p90",
    "ward_over_capacity": "Ward above capacity",
}

st.title("Alerts")
st.caption(
    "Alerts are suggestions. A clinician checks each one; acknowledging records your name and "
    "the time in the audit trail. Alerts resolve themselves when their condition clears."
)
col1, col2, col3 = st.columns([2, 2, 1])
status = col1.selectbox("Status", ["open", "resolved", ""], format_func=lambda s: s or "All")
kind = col2.selectbox("Type", list(ALERT_TYPES), format_func=lambda k: ALERT_TYPES.get(k, k))
todo = col3.checkbox("Not yet acknowledged", value=False)


@st.fragment(run_every=REFRESH)
def worklist() -> None:
    """The live list."""
    frame = queries.alerts(engine(), status or None, kind or None, todo)
    st.metric("Alerts listed", len(frame))
    if frame.empty:
        st.success("Nothing to act on for this filter.")
        return
    st.dataframe(
        local_time(frame, "raised_at", "resolved_at", "acknowledged_at"),
        hide_index=True,
        use_container_width=True,
    )


worklist()

st.subheader("Acknowledge an alert")
open_unacked = queries.alerts(engine(), "open", None, True)
if open_unacked.empty:
    st.write("Every open alert has been acknowledged.")
else:
    with st.form("acknowledge"):
        choice = st.selectbox(
            "Alert",
            open_unacked["alert_id"].tolist(),
            format_func=lambda a: " · ".join(
                str(v)
                for v in open_unacked.loc[open_unacked["alert_id"] == a, ["alert_type", "message"]]
                .iloc[0]
                .tolist()
            ),
        )
        actor = st.text_input("Your name", key="ack_actor")
        note = st.text_input("Note (optional)", key="ack_note")
        if st.form_submit_button("Acknowledge"):
            if not actor.strip():
                st.error("Enter your name: the audit trail records who acknowledged the alert.")
            elif queries.acknowledge_alert(
                engine(), choice, actor, datetime.now(UTC), note or None
            ):
                st.success(f"Acknowledged by {actor.strip()}.")
            else:
                st.warning("Someone acknowledged this alert already; the list is refreshed.")

st.subheader("Audit trail")
alert_id = st.text_input("Alert id", key="audit_alert_id")
if alert_id:
    st.dataframe(local_time(queries.alert_audit(engine(), alert_id), "at"), hide_index=True)
