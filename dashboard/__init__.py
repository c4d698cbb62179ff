"""Streamlit dashboard: bed board, pathways, alert worklist, forecasts, feed health."""
