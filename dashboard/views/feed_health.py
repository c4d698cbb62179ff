"""Feed health: what each integrator sent, what was refused and why, and whether the stream
workers keep up with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from dashboard import queries
from dashboard.common import REFRESH, engine, local_time

st.title("Feed health")
hours = st.slider("Rejections of the last … hours", 1, 168, 24)


def streams(now: datetime) -> None:
    """Whether the stream workers keep up: the bed board is only as fresh as they are."""
    st.subheader("Stream workers")
    progress = queries.stream_progress(engine(), now)
    if progress.empty:
        st.info("No stream worker has reported yet. Start one with `parcours streams worker`.")
        return
    silent, behind = queries.stream_freshness(progress)
    if silent:
        st.warning(
            f"{silent} partition(s) without a report from their worker: the bed board and "
            "the alerts stop there. Check that `parcours streams worker` runs and reaches Kafka "
            "and the database (its log says why it stopped)."
        )
    elif behind:
        st.info(f"Catching up: {behind:,} accepted messages are not on the bed board yet.")
    else:
        st.success("Up to date: every accepted message is on the bed board.")
    first = ["topic", "partition", "status", "lag"]
    progress = progress[first + [c for c in progress.columns if c not in first]]
    st.dataframe(local_time(progress, "reported_at"), hide_index=True, use_container_width=True)


def unresolved(pending: pd.DataFrame) -> None:
    """References to hospitals, places or practitioners accepted before their target."""
    st.subheader(f"Références en attente / Unresolved references ({len(pending)})")
    if pending.empty:
        st.success("Every accepted reference points at a resource received.")
        return
    st.warning(
        "These references were accepted before the resource they point at "
        "(PARCOURS_INGEST_DEFER_UNRESOLVED). The visits and stays that carry them are counted; "
        "their place reads «pas encore connu» until the resource arrives. Send the hospital "
        "and practitioner Bundles to resolve them."
    )
    st.dataframe(
        local_time(pending, "first_seen_at", "last_seen_at"),
        hide_index=True,
        use_container_width=True,
    )


@st.fragment(run_every=REFRESH)
def health(hours: int) -> None:
    """Counters per integrator and the latest rejections; refreshes itself."""
    feeds = queries.feeds(engine())
    if feeds.empty:
        st.info("No integrator yet. Create one with `parcours ingest token create NAME`.")
    else:
        st.dataframe(local_time(feeds, "last_seen_at"), hide_index=True, use_container_width=True)
    streams(datetime.now(UTC))
    unresolved(queries.unresolved_references(engine()))
    waiting = queries.places_not_received(engine())
    if not waiting.empty:
        st.subheader(f"Lieux pas encore connus / Places not received yet ({len(waiting)})")
        st.caption(
            "Stays and ED visits name these Locations, which no feed has sent: they are counted "
            "at their hospital and placed when the Location arrives."
        )
        st.dataframe(waiting, hide_index=True, use_container_width=True)
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
