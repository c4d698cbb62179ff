"""The Forecasts page's words: model names and accuracy sentences in French, from plain numbers.

No Streamlit import, so the sentences are tested on their own.
"""

from __future__ import annotations

import math

MODEL_LABELS = {
    "stock_flow": "Stock–flux (patients présents et arrivées attendues)",
    "stock_flow_flat": "Stock–flux, admissions au niveau récent",
    "stock_flow_trend": "Stock–flux, admissions selon la tendance",
    "auto_ets": "Lissage exponentiel (AutoETS)",
    "auto_arima": "AutoARIMA",
    "auto_theta": "Theta (AutoTheta)",
    "prophet": "Prophet",
    "naive": "Naïve (dernière valeur)",
    "seasonal_naive_24": "Naïve saisonnière (même heure la veille)",
    "seasonal_naive_7": "Naïve saisonnière (même jour la semaine précédente)",
}

LEVEL_LABELS = {
    "hospital": "Hôpitaux",
    "service": "Services",
    "ward": "Unités de soins",
    "departement": "Départements (fichier SPF)",
}


def model_label(model: str) -> str:
    """The French name of a model."""
    return MODEL_LABELS.get(model, model)


def number(value: float, decimals: int = 1) -> str:
    """A number written the French way: decimal comma, narrow no-break space between thousands."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{value:,.{decimals}f}"
    return text.replace(",", "\u202f").replace(".", ",")


def percent(value: float) -> str:
    """A share as a French percentage: `0.79` → `79 %`."""
    return f"{number(100 * value, 0)}\u00a0%"


def lead_phrase(lead: int, freq: str) -> str:
    """`à 24 h`, `à 3 jours`: how far ahead a forecast looks."""
    if freq.lower() == "h":
        return f"à {lead} h"
    return f"à {lead} jour" if lead == 1 else f"à {lead} jours"


def window_phrase(days: float) -> str:
    """`sur les 8 dernières semaines`, `sur les 12 derniers jours`."""
    whole = max(1, round(days))
    if whole < 14:
        return "sur le dernier jour" if whole == 1 else f"sur les {whole} derniers jours"
    weeks = round(days / 7)
    return f"sur les {weeks} dernières semaines"


def beds(value: float) -> str:
    """`3,1 lits`, `1,0 lit` (French: singular below 2)."""
    return f"{number(value)} lit" if abs(value) < 2 else f"{number(value)} lits"


def accuracy_sentence(
    window_days: float, lead: int, freq: str, mae: float, naive_mae: float | None
) -> str:
    """How far off the forecast was in its backtest, beside the naive forecast, in plain words."""
    head = window_phrase(window_days)
    text = (
        f"{head[0].upper()}{head[1:]}, {lead_phrase(lead, freq)}, cette prévision s'est trompée "
        f"de {beds(mae)} en moyenne"
    )
    if naive_mae is not None and not math.isnan(naive_mae):
        text += f" ; la prévision naïve de {number(naive_mae)}"
    return text + "."


def terms_sentence(
    lead: int, freq: str, now: float, discharges: float, admissions: float, yhat: float
) -> str:
    """How a stock–flow forecast breaks down: `612 présents, −85 sorties, +71 admissions`."""
    return (
        f"{lead_phrase(lead, freq).capitalize()} : {number(now, 0)} patients présents maintenant, "
        f"−{number(discharges, 0)} sorties attendues, +{number(admissions, 0)} admissions "
        f"attendues → {number(yhat, 0)} lits occupés."
    )


def mase_sentence(mase: float, freq: str) -> str:
    """What the MASE says, against the naive forecast it is scaled by."""
    peer = "la même heure la veille" if freq.lower() == "h" else "la dernière valeur connue"
    verdict = "fait mieux que" if mase < 1 else "ne fait pas mieux que" if mase > 1 else "égale"
    return (
        f"MASE : {number(mase, 2)}. Sous 1, la prévision fait mieux que de répéter {peer} ; "
        f"celle-ci {verdict} cette référence."
    )


def coverage_sentence(coverage: float, target: float) -> str:
    """The interval's measured coverage against its target."""
    low, high = target - 0.05, target + 0.05
    ok = low <= coverage <= high
    verdict = "dans la cible" if ok else "hors de la cible"
    return (
        f"Intervalle à {percent(target)} : {percent(coverage)} des valeurs observées y sont "
        f"tombées ({verdict} de {percent(low)} à {percent(high)})."
    )
