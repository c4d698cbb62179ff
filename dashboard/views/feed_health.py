"""Feed health: what each integrator sent, what was refused and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import streamlit as st

from dashboard import queries
from dashboard.common import REFRESH, engine, local_time

st.title("Feed health")
hours = st.slider("Rejections of the last … hours", 1, 168, 24)


@st.fragment(run_every=REFRESH)
def health(hours: int) -> None:
    """Counters per integrator and the latest rejections; refreshes itself."""
    feeds = queries.feeds(engine())
    if feeds.empty:
        st.info("No integrator yet. Create one with `parcours ingest token create NAME`.")
    else:
        st.dataframe(local_time(feeds, "last_seen_at"), hide_index=True, use_container_width=True)
    since = datetime.now(UTC) - timedelta(hours=hours)
    rejected = queries.recent_rejections(engine(), since=since)
    st.subheader(f"Rejections ({len(rejected)})")
    if rejected.empty:
        st.success("Nothing rejected in this window.")
        return
    by_reason = rejected.groupby(["source", "reason"]).size().rename("count").reset_index()
    st.dataframe(by_reason, hide_index=True)
    st.dataframe(local_time(rejected, "received_at"), hide_index=True, use_container_width=True)


health(hours)
