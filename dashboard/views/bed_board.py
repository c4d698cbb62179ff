"""Bed board: live occupancy and capacity per ward, service and hospital."""

from __future__ import annotations

from datetime import UTC, datetime

import streamlit as st

from dashboard import queries
from dashboard.common import REFRESH, engine, local_time
from streams import read

st.title("Bed board")
level = st.segmented_control(
    "Level", ["ward", "service", "hospital"], default="ward", key="bed_board_level"
)


@st.fragment(run_every=REFRESH)
def board(level: str) -> None:
    """The live table; it refreshes itself."""
    totals = read.summary(engine())
    frame = queries.bed_board(engine(), level)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Inpatients now", totals["open_stays"])
    c2.metric("Beds occupied", int(frame["occupied"].sum()) if not frame.empty else 0)
    capacity = frame["capacity"].sum() if not frame.empty else 0
    c3.metric("Beds in service", int(capacity) if capacity == capacity else "—")
    c4.metric("Open alerts", sum(totals["open_alerts"].values()))
    silent, behind = queries.stream_freshness(queries.stream_progress(engine(), datetime.now(UTC)))
    if silent:
        st.warning(
            f"The stream worker of {silent} partition(s) stopped reporting: this board may be out "
            "of date. The Feed health page says which, and what to check."
        )
    elif behind:
        st.caption(f"Catching up: {behind:,} accepted messages are not on this board yet.")
    if frame.empty:
        st.info(
            "No occupancy yet. Start the stream worker (`parcours streams worker`) and push "
            "Location and Encounter resources, or run `parcours demo`."
        )
        return
    full = frame[frame["occupancy_rate"] >= 1.0]
    if not full.empty:
        st.warning(
            f"{len(full)} {level}(s) at or above capacity: "
            + ", ".join(full["name"].fillna(full["unit_id"]))
        )
    st.dataframe(
        local_time(frame, "as_of"),
        hide_index=True,
        use_container_width=True,
        column_config={
            "unit_id": st.column_config.TextColumn("Unit"),
            "name": st.column_config.TextColumn("Name"),
            "hospital_id": st.column_config.TextColumn("Hospital"),
            "occupied": st.column_config.NumberColumn("Occupied"),
            "capacity": st.column_config.NumberColumn("Capacity"),
            "free": st.column_config.NumberColumn("Free"),
            "occupancy_rate": st.column_config.ProgressColumn(
                "Occupancy", format="percent", min_value=0.0, max_value=1.0
            ),
            "as_of": st.column_config.DatetimeColumn("As of"),
        },
    )


board(level or "ward")
