"""Bed-demand forecasts with their intervals, and how accurate each model was in backtests."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import queries
from dashboard.common import engine, local_time

st.title("Forecasts")
st.caption(
    "Each forecast shows its prediction interval. The table below says how far off each model "
    "was on recent history it had not seen (rolling-origin backtest); trust the best one, and no "
    "model blindly."
)
metric = st.selectbox("Series", ["occupancy", "admissions", "discharges", "ed_arrivals", "hosp"])
units = queries.forecast_units(engine(), metric)
if not units:
    st.info(
        "No forecast yet for this series. Run `parcours forecast run` once the census has a few "
        "days of history (or backfill with `parcours simulate`)."
    )
    st.stop()
unit = st.selectbox("Unit", units, key="forecast_unit")
accuracy = queries.forecast_accuracy(engine(), unit, metric)
frame = local_time(queries.forecast(engine(), unit, metric), "ds", "run_at", "history_end")
models = frame["model"].unique().tolist()
best = accuracy["model"].iloc[0] if not accuracy.empty else models[0]
chosen = st.multiselect("Models", models, default=[best])
shown = frame[frame["model"].isin(chosen)]

history = queries.census_history(engine(), "ward", unit) if metric != "hosp" else pd.DataFrame()
layers: list[alt.Chart] = []
if not history.empty and metric in history:
    hist = local_time(history, "hour").rename(columns={"hour": "ds", metric: "y"})
    layers.append(alt.Chart(hist.tail(24 * 14)).mark_line(color="black").encode(x="ds:T", y="y:Q"))
band = (
    alt.Chart(shown)
    .mark_area(opacity=0.25)
    .encode(
        x=alt.X("ds:T", title="Time"),
        y=alt.Y("yhat_lower:Q", title=metric),
        y2="yhat_upper:Q",
        color="model:N",
    )
)
line = alt.Chart(shown).mark_line().encode(x="ds:T", y="yhat:Q", color="model:N")
st.altair_chart(alt.layer(*layers, band, line), use_container_width=True)

if not frame.empty:
    width = float(frame["interval_width"].iloc[0])
    st.caption(
        f"Shaded: {width:.0%} prediction interval. Last history point: "
        f"{frame['history_end'].iloc[0]:%Y-%m-%d %H:%M}; run at {frame['run_at'].iloc[0]:%Y-%m-%d %H:%M}."
    )
st.subheader("Backtest accuracy")
if accuracy.empty:
    st.write("No backtest for this unit yet (`parcours forecast backtest`).")
else:
    st.dataframe(
        accuracy,
        hide_index=True,
        column_config={
            "mape": st.column_config.NumberColumn("MAPE", format="percent"),
            "coverage": st.column_config.NumberColumn("Interval coverage", format="percent"),
        },
    )
