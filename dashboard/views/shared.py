"""Pieces several pages show: the staleness warning, occupancy levels, alert labels."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import streamlit as st

from dashboard import queries
from dashboard.common import _, _n, engine, number


def occupancy_level(rate: float | None) -> str:
    """normale below 85 %, tendue to 95 %, saturée above (French catalogue keys)."""
    if rate is None or pd.isna(rate) or rate < 0.85:
        return "normale"
    return "tendue" if rate < 0.95 else "saturée"


def stale_warning(at: datetime) -> None:
    """Say so when the board is old, or when a stream worker stopped reporting."""
    age = queries.data_age(engine(), at)
    if age is not None and age > queries.STALE_AFTER:
        hours = age.total_seconds() / 3600
        st.warning(
            _(
                "Données anciennes : la dernière mise à jour date de {age}. "
                "Vérifiez les flux (page État des flux) avant de décider sur ce tableau.",
                age=_("{n} h", n=number(hours, 1))
                if hours < 48
                else _("{n} j", n=number(hours / 24, 1)),
            )
        )
    silent, behind = queries.stream_freshness(queries.stream_progress(engine(), at))
    if silent:
        st.warning(
            _n(
                "Le traitement de {n} partition ne donne plus de nouvelles : ce tableau peut "
                "ne pas être à jour. La page État des flux dit laquelle et quoi vérifier.",
                "Le traitement de {n} partitions ne donne plus de nouvelles : ce tableau peut "
                "ne pas être à jour. La page État des flux dit lesquelles et quoi vérifier.",
                silent,
            )
        )
    elif behind:
        st.caption(
            _n(
                "Rattrapage en cours : {count} message reçu n'est pas encore pris en compte.",
                "Rattrapage en cours : {count} messages reçus ne sont pas encore pris en compte.",
                behind,
                count=number(behind),
            )
        )
