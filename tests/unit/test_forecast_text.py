"""The Forecasts page's French sentences, from plain numbers."""

from __future__ import annotations

import inspect

from dashboard.forecast_text import (
    DAILY_HISTORY_DAYS,
    accuracy_sentence,
    coverage_sentence,
    model_label,
    number,
    terms_sentence,
    window_phrase,
)


def test_accuracy_in_plain_words_beside_the_naive_forecast() -> None:
    assert accuracy_sentence(56, 24, "h", 3.1, 4.7) == (
        "Sur les 8 dernières semaines, à 24 h, cette prévision s'est trompée de 3,1 lits en "
        "moyenne ; la prévision naïve de 4,7."
    )
    assert accuracy_sentence(10, 7, "D", 1.04, None) == (
        "Sur les 10 derniers jours, à 7 jours, cette prévision s'est trompée de 1,0 lit en moyenne."
    )


def test_numbers_and_windows_read_the_french_way() -> None:
    assert number(1234.56) == "1\u202f234,6"
    assert number(float("nan")) == "—"
    assert window_phrase(1) == "sur le dernier jour"
    assert window_phrase(12.6) == "sur les 13 derniers jours"
    assert window_phrase(21) == "sur les 3 dernières semaines"


def test_terms_and_coverage_sentences() -> None:
    assert terms_sentence(24, "h", 612, 85, 71, 598) == (
        "À 24 h : 612 patients présents maintenant, −85 sorties attendues, +71 admissions "
        "attendues → 598 lits occupés."
    )
    assert "hors de la cible" in coverage_sentence(0.63, 0.8)
    assert "dans la cible" in coverage_sentence(0.79, 0.8)
    assert model_label("stock_flow").startswith("Stock–flux")
    assert model_label("unknown") == "unknown"


def test_the_ensemble_has_a_name_in_both_languages() -> None:
    assert model_label("ensemble") == "Ensemble (moyenne des trois meilleurs modèles)"
    assert model_label("ensemble", "en") == "Ensemble (mean of the three best models)"


def test_the_daily_history_said_to_be_needed_is_what_the_forecaster_asks() -> None:
    from forecasting import cli

    default_horizon = inspect.signature(cli.run_cmd).parameters["daily_horizon"].default
    assert default_horizon + cli.DAILY_MIN_TRAIN == DAILY_HISTORY_DAYS
