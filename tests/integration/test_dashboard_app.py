"""The Streamlit pages, run with Streamlit's AppTest against the session's PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from parcours.db import make_engine
from tests.seed import Seeded, seed

pytestmark = pytest.mark.integration
APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py")


@pytest.fixture
def app(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AppTest, Seeded]]:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    seeded = seed(make_engine(pg_url), f"a{uuid.uuid4().hex[:6]}-")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    yield at, seeded


def test_bed_board_shows_wards_and_warns_about_the_full_one(app: tuple[AppTest, Seeded]) -> None:
    at, s = app
    assert [t.value for t in at.title] == ["Bed board"]
    table = at.dataframe[0].value
    assert {s.ward_full, s.ward_quiet} <= set(table["unit_id"])
    assert any(f"{s.prefix}Cardiologie" in w.value for w in at.warning)


def test_a_coordinator_acknowledges_an_alert_by_name(
    app: tuple[AppTest, Seeded], pg_url: str
) -> None:
    at, s = app
    at.switch_page("views/alerts.py").run()
    assert not at.exception, at.exception
    chooser = next(sb for sb in at.selectbox if sb.label == "Alert")
    chooser.set_value(s.alert)
    at.text_input(key="ack_actor").input("")
    at.button[0].click().run()
    assert any("Enter your name" in e.value for e in at.error)

    chooser = next(sb for sb in at.selectbox if sb.label == "Alert")
    chooser.set_value(s.alert)
    at.text_input(key="ack_actor").input("Inf. Dupont")
    at.text_input(key="ack_note").input("appel au médecin traitant")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert any("Acknowledged by Inf. Dupont" in m.value for m in at.success)
    with make_engine(pg_url).connect() as conn:
        trail = conn.execute(
            text("SELECT actor, note FROM alert_audit WHERE alert_id = :a"), {"a": s.alert}
        ).all()
    assert [tuple(r) for r in trail] == [("Inf. Dupont", "appel au médecin traitant")]


def test_forecast_page_shows_the_selected_model_and_its_accuracy_in_words(
    app: tuple[AppTest, Seeded],
) -> None:
    at, s = app
    at.switch_page("views/forecasts.py").run()
    at.radio(key="forecast_level").set_value("ward").run()
    at.selectbox(key="forecast_unit").set_value(s.ward_full).run()
    assert not at.exception, at.exception
    assert any(h.value == "Modèle retenu : Prophet" for h in at.subheader)
    assert any("intervalle de prévision à 80" in c.value for c in at.caption)
    text = " ".join(m.value for m in at.markdown)
    assert "Sur les 8 dernières semaines, à 24 h, cette prévision s'est trompée de 3,1 lits" in text
    assert "la prévision naïve de 4,7" in text
    assert "MASE : 0,60" in text
    assert "81\u00a0% des valeurs observées" in text
    assert "21 patients présents maintenant, −5 sorties attendues, +6 admissions attendues" in text
    table = at.dataframe[0].value
    assert table["Modèle"].tolist() == ["Prophet (retenu)", "Naïve (dernière valeur)"]


def test_pathway_page_finds_the_patient(app: tuple[AppTest, Seeded]) -> None:
    at, s = app
    at.switch_page("views/pathways.py").run()
    at.text_input(key="patient_search").input(s.prefix).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="patient_choice").value == s.patient
    assert any(f"Patient {s.patient}" == h.value for h in at.subheader)
    assert any("discharged" in m.value for m in at.markdown)
