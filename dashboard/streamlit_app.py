"""Parcours dashboard: one Streamlit app, its pages in `dashboard/views/`.

Run with `parcours dashboard` (it sets DATABASE_URL and the rest through the environment).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="Parcours", page_icon=":material/local_hospital:", layout="wide")
page = st.navigation(
    {
        "Hospital": [
            st.Page(VIEWS / "bed_board.py", title="Bed board", icon=":material/bed:", default=True),
            st.Page(VIEWS / "forecasts.py", title="Forecasts", icon=":material/trending_up:"),
        ],
        "Care coordination": [
            st.Page(VIEWS / "alerts.py", title="Alerts", icon=":material/notifications:"),
            st.Page(VIEWS / "pathways.py", title="Pathways", icon=":material/route:"),
        ],
        "Integration": [
            st.Page(VIEWS / "feed_health.py", title="Feed health", icon=":material/sensors:")
        ],
    }
)
page.run()
