"""The Forecasts page's words: model names and accuracy sentences, from plain numbers; written
in French, in another language through its catalogue (`lang`).

No Streamlit import, so the sentences are tested on their own.
"""

from __future__ import annotations

import math

from dashboard import i18n
from dashboard.i18n import translate

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
    "ensemble": "Ensemble (moyenne des trois meilleurs modèles)",
}

# The prefix of the model name under which the forecaster stores the forecast stitched from
# several models, one per band of leads (`selected:stock_flow`, `selected:ensemble`…).
STITCHED = "selected:"

# The whole days of census a unit needs before its daily forecast is written: the default
# horizon (14 days) to score the backtest on, after 14 to learn from (`forecast run`).
DAILY_HISTORY_DAYS = 28

LEVEL_LABELS = {
    "hospital": "Hôpitaux",
    "service": "Services",
    "ward": "Unités de soins",
    "departement": "Départements (fichier SPF)",
}


def model_label(model: str, lang: str = "fr") -> str:
    """The name of a model, in `lang`."""
    return translate(lang, MODEL_LABELS[model]) if model in MODEL_LABELS else model


def number(value: float | None, decimals: int = 1, lang: str = "fr") -> str:
    """A number as `lang` writes it (French: decimal comma, narrow no-break space between
    thousands); a dash when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return i18n.number(lang, value, decimals)


def percent(value: float, lang: str = "fr") -> str:
    """A share as a percentage: `0.79` → `79 %`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return i18n.percent(lang, value)


def lead_phrase(lead: int, freq: str, lang: str = "fr") -> str:
    """`à 24 h`, `à 3 jours`: how far ahead a forecast looks."""
    if freq.lower() == "h":
        return translate(lang, "à {n} h", n=lead)
    if lead == 1:
        return translate(lang, "à {n} jour", n=lead)
    return translate(lang, "à {n} jours", n=lead)


def band_runs(models: list[str]) -> list[tuple[int, int, str]]:
    """The model of each lead (1-based, in order) as runs of consecutive leads: `(first, last,
    model)`."""
    runs: list[tuple[int, int, str]] = []
    for lead, model in enumerate(models, start=1):
        if runs and runs[-1][2] == model:
            runs[-1] = (runs[-1][0], lead, model)
        else:
            runs.append((lead, lead, model))
    return runs


def bands_sentence(runs: list[tuple[int, int, str]], freq: str, lang: str = "fr") -> str:
    """`Modèle retenu selon l'échéance : 1 à 24 h, … ; 25 à 72 h, …`, the model serving each band
    of leads."""
    hourly = freq.lower() == "h"
    parts = []
    for first, last, model in runs:
        name = model_label(model, lang)
        if hourly:
            parts.append(
                translate(lang, "{first} à {last} h : {model}", first=first, last=last, model=name)
            )
        else:
            parts.append(
                translate(
                    lang, "{first} à {last} jours : {model}", first=first, last=last, model=name
                )
            )
    return translate(
        lang,
        "Modèle retenu selon l'échéance : {bands}.",
        bands=(" ; " if lang == "fr" else "; ").join(parts),
    )


def window_phrase(days: float, lang: str = "fr") -> str:
    """`sur les 8 dernières semaines`, `sur les 12 derniers jours`."""
    whole = max(1, round(days))
    if whole < 14:
        if whole == 1:
            return translate(lang, "sur le dernier jour")
        return translate(lang, "sur les {n} derniers jours", n=whole)
    return translate(lang, "sur les {n} dernières semaines", n=round(days / 7))


def beds(value: float, lang: str = "fr") -> str:
    """`3,1 lits`, `1,0 lit` (French: singular below 2)."""
    n = number(value, lang=lang)
    if abs(value) < 2:
        return translate(lang, "{n} lit", n=n)
    return translate(lang, "{n} lits", n=n)


def accuracy_sentence(
    window_days: float,
    lead: int,
    freq: str,
    mae: float,
    naive_mae: float | None,
    lang: str = "fr",
) -> str:
    """How far off the forecast was in its backtest, beside the naive forecast, in plain words."""
    head = window_phrase(window_days, lang)
    text = translate(
        lang,
        "{window}, {lead}, cette prévision s'est trompée de {beds} en moyenne",
        window=head[0].upper() + head[1:],
        lead=lead_phrase(lead, freq, lang),
        beds=beds(mae, lang),
    )
    if naive_mae is not None and not math.isnan(naive_mae):
        text += translate(lang, " ; la prévision naïve de {n}", n=number(naive_mae, lang=lang))
    return text + "."


def terms_sentence(
    lead: int,
    freq: str,
    now: float,
    discharges: float,
    admissions: float,
    yhat: float,
    lang: str = "fr",
) -> str:
    """How a stock–flow forecast breaks down: `612 présents, −85 sorties, +71 admissions`."""
    return translate(
        lang,
        "{lead} : {now} patients présents maintenant, −{gone} sorties attendues, +{come} "
        "admissions attendues → {total} lits occupés.",
        lead=lead_phrase(lead, freq, lang).capitalize(),
        now=number(now, 0, lang),
        gone=number(discharges, 0, lang),
        come=number(admissions, 0, lang),
        total=number(yhat, 0, lang),
    )


def mase_sentence(mase: float, freq: str, lang: str = "fr") -> str:
    """What the MASE says, against the naive forecast it is scaled by."""
    if freq.lower() == "h":
        peer = translate(lang, "la même heure la veille")
    else:
        peer = translate(lang, "la dernière valeur connue")
    if mase < 1:
        verdict = translate(lang, "fait mieux que")
    elif mase > 1:
        verdict = translate(lang, "ne fait pas mieux que")
    else:
        verdict = translate(lang, "égale")
    return translate(
        lang,
        "MASE : {mase}. Sous 1, la prévision fait mieux que de répéter {peer} ; celle-ci "
        "{verdict} cette référence.",
        mase=number(mase, 2, lang),
        peer=peer,
        verdict=verdict,
    )


def coverage_sentence(coverage: float, target: float, lang: str = "fr") -> str:
    """The interval's measured coverage against its target."""
    low, high = target - 0.05, target + 0.05
    ok = low <= coverage <= high
    return translate(
        lang,
        "Intervalle à {target} : {coverage} des valeurs observées y sont tombées ({verdict} de "
        "{low} à {high}).",
        target=percent(target, lang),
        coverage=percent(coverage, lang),
        verdict=translate(lang, "dans la cible") if ok else translate(lang, "hors de la cible"),
        low=percent(low, lang),
        high=percent(high, lang),
    )
