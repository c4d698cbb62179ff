"""Streamlit dashboard, in French behind sign-in: bed board, worklists, pathways, alerts,
forecasts, feed health, users and the access journal, each for its roles."""
