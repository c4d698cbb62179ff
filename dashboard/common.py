"""What every dashboard page shares: the settings and the database engine, made once per server."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from parcours.db import make_engine
from parcours.settings import Settings

REFRESH = "10s"


@st.cache_resource
def settings() -> Settings:
    """The dashboard process's settings, read once."""
    return Settings()


@st.cache_resource
def engine() -> Engine:
    """One engine (connection pool) for the whole Streamlit server."""
    return make_engine(settings().db_url)


def local_time(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Show UTC timestamps in the territory's time zone, the one staff read on the ward clock."""
    out = frame.copy()
    for col in columns:
        if col in out:
            out[col] = pd.to_datetime(out[col], utc=True).dt.tz_convert(settings().timezone)
    return out
