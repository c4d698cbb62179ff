"""The Streamlit pages, run with Streamlit's AppTest against the session's PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import streamlit as st
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from dashboard import accounts, roles
from dashboard.accounts import Role, User
from parcours.db import make_engine
from tests.seed import Seeded, seed, seed_daily, seed_outlook

# A deprecated call in the dashboard fails these tests rather than flooding a log later.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("error::DeprecationWarning")]
APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py")
PASSWORD = "correct horse battery"


@pytest.fixture
def seeded(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    monkeypatch.setenv("DATABASE_URL", pg_url)
    # Session cookies are signed with this rather than a key file made in the working folder.
    monkeypatch.setenv("PARCOURS_DASHBOARD_SESSION_SECRET", "test-session-secret")
    return seed(make_engine(pg_url), f"a{uuid.uuid4().hex[:6]}-")


def signed_in(role: Role, name: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["user"] = User(name or f"{role.value}-{uuid.uuid4().hex[:4]}", role)
    at.run()
    assert not at.exception, at.exception
    return at


def open_page(at: AppTest, spec: roles.PageSpec) -> AppTest:
    at.switch_page(f"views/{spec.script}").run()
    assert not at.exception, at.exception
    return at


def everything_shown(at: AppTest) -> bytes:
    """Every element's serialised content: texts, tables (Arrow), charts (their data)."""
    out = bytearray()

    def walk(node: object) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None and hasattr(proto, "SerializeToString"):
            out.extend(proto.SerializeToString())
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return bytes(out)


def test_nothing_but_the_french_sign_in_page_before_signing_in(seeded: Seeded) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Connexion à Parcours"]
    assert {ti.label for ti in at.text_input} == {"Identifiant", "Mot de passe"}
    assert len(at.dataframe) == 0
    assert seeded.patient.encode() not in everything_shown(at)


def test_sign_in_with_a_local_account_and_a_wrong_password(seeded: Seeded, pg_url: str) -> None:
    name = f"inf-{uuid.uuid4().hex[:6]}"
    accounts.create_user(make_engine(pg_url), name, Role.COORDINATOR, PASSWORD)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input("not the password")
    at.button[0].click().run()
    assert any("incorrect" in e.value for e in at.error)
    assert [t.value for t in at.title] == ["Connexion à Parcours"]

    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Listes de travail"]
    with make_engine(pg_url).connect() as conn:
        actions = conn.execute(
            text("SELECT action FROM access_audit WHERE username = :u ORDER BY access_id"),
            {"u": name},
        ).scalars()
        assert list(actions) == ["sign_in_refused", "sign_in"]


@pytest.mark.parametrize("role", list(Role))
def test_each_role_sees_its_pages_and_is_refused_the_others(seeded: Seeded, role: Role) -> None:
    at = signed_in(role)
    for spec in roles.PAGES:
        if spec.script == "forecasts.py":
            continue  # its content belongs to the forecasting pages; its access is checked below
        open_page(at, spec)
        refused = [e.value for e in at.error if e.value.startswith("Accès refusé")]
        if role in spec.roles:
            assert not refused, (role, spec.url_path, refused)
        else:
            assert refused, (role, spec.url_path)
            assert "Demandez à un administrateur" in refused[0]
            assert len(at.dataframe) == 0


def test_forecasts_are_refused_to_coordinators(seeded: Seeded) -> None:
    at = open_page(signed_in(Role.COORDINATOR), roles.page("previsions"))
    assert any(e.value.startswith("Accès refusé") for e in at.error)


def test_no_page_shows_a_patient_identifier_to_a_manager(seeded: Seeded) -> None:
    at = signed_in(Role.MANAGER)
    for spec in roles.PAGES:
        open_page(at, spec)
        assert at.title, spec.url_path
        assert seeded.patient.encode() not in everything_shown(at), spec.url_path
    # The same pages show the patient to an admin: the check above can fail.
    admin = open_page(signed_in(Role.ADMIN), roles.page("alertes"))
    assert seeded.patient.encode() in everything_shown(admin)


def test_bed_board_drills_down_and_warns_about_the_full_ward(seeded: Seeded) -> None:
    at = signed_in(Role.MANAGER)
    assert [t.value for t in at.title] == ["Tableau des lits"]
    assert any(f"{seeded.prefix}Cardiologie" in w.value for w in at.warning)
    labels = {m.label for m in at.metric}
    assert {"Lits occupés", "Lits libres", "En attente d'un lit aux urgences"} <= labels
    for frame in at.dataframe:
        for column in frame.value.columns:
            assert "_" not in column, column


def vega_lite_specs(at: AppTest) -> list[dict[str, Any]]:
    """The Vega-Lite specs of the charts a page shows."""
    found: list[dict[str, Any]] = []

    def walk(node: object) -> None:
        spec = getattr(getattr(node, "proto", None), "spec", None)
        if isinstance(spec, str) and spec.startswith("{"):
            found.append(json.loads(spec))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return found


def test_bed_board_heat_map_has_one_cell_per_ward_and_hour(seeded: Seeded, pg_url: str) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with make_engine(pg_url).begin() as conn:
        for h in range(1, 25):
            conn.execute(
                text(
                    "INSERT INTO census_hourly (unit_type, unit_id, hour, hospital_id, occupancy, "
                    "admissions, discharges, transfers_in, transfers_out, ed_arrivals) "
                    "VALUES ('ward', :w, :at, :h, :n, 0, 0, 0, 0, 0)"
                ),
                {
                    "w": seeded.ward_full,
                    "at": hour - timedelta(hours=h),
                    "h": seeded.hospital,
                    "n": h,
                },
            )
    # The page keeps the week's cells a few minutes: read this test's.
    st.cache_data.clear()
    at = signed_in(Role.MANAGER)
    heat = next(
        s for s in vega_lite_specs(at) if s.get("encoding", {}).get("y", {}).get("title") == "Unité"
    )
    # Without the hour as time unit, each cell spans the whole week and the last hour hides it.
    assert heat["encoding"]["x"]["timeUnit"] == "yearmonthdatehours"
    # Every row's ward is named, in full: none hidden as overlapping, none cut short.
    axis = heat["encoding"]["y"]["axis"]
    assert axis["labelOverlap"] is False and axis["labelLimit"] >= 400


def outlook_of(unit: str, name: str, occupied: float, capacity: float, lang: str = "fr") -> Any:
    """The bed board's outlook of one unit, as the drill-down shows it once the unit is picked
    (AppTest cannot click a table's row)."""

    def script(unit: str, name: str, occupied: float, capacity: float) -> None:
        from dashboard import outlook

        outlook.show("hospital", unit, name, occupied, capacity)

    at = AppTest.from_function(script, default_timeout=60, args=(unit, name, occupied, capacity))
    at.session_state["user"] = User("cadre", Role.MANAGER)
    at.session_state["lang"] = lang
    at.run()
    assert not at.exception, at.exception
    return at


def test_bed_board_outlook_shows_the_band_and_its_breakdown(seeded: Seeded, pg_url: str) -> None:
    live = seed_outlook(make_engine(pg_url), seeded, datetime.now(UTC))
    at = outlook_of(live.hospital, live.name, 29, 44)
    assert [h.value for h in at.subheader] == [f"{live.name} : occupation et prévision"]
    assert not at.warning and not at.info
    shown = {m.label: m.value for m in at.metric}
    assert shown["Lits libres maintenant"] == "15"
    assert shown["Prévision dans 24 h"] == "27 lits"
    assert shown["Prévision dans 72 h"] == "23 lits"
    assert shown["Sorties attendues d'ici minuit"] != "—"
    text = " ".join(m.value for m in at.markdown)
    assert (
        "Dans 24 h : 29 patients présents maintenant, −8 sorties attendues, +6 admissions "
        "attendues → 27 lits occupés." in text
    )
    table = at.dataframe[0].value
    assert table["Échéance"].tolist() == ["dans 24 h", "dans 48 h", "dans 72 h"]
    assert table["Sorties attendues"].tolist() == ["−8", "−16", "−24"]
    assert table["Intervalle à 80\u00a0%"].tolist()[0] == "24 – 30"
    assert "None" not in table.astype(str).to_numpy()
    assert any("zone bleue : son intervalle à 80\u00a0%" in c.value for c in at.caption)
    # The band chart: the forecast's interval beside a week of observed occupancy.
    charts = at.get("vega_lite_chart")
    assert len(charts) == 1
    payload = charts[0].proto.SerializeToString()
    assert b"lower" in payload and b"upper" in payload and b"Observ" in payload

    english = outlook_of(live.hospital, live.name, 29, 44, lang="en")
    assert "Forecast in 24 h" in {m.label for m in english.metric}
    assert "Expected departures" in english.dataframe[0].value.columns


def test_bed_board_outlook_says_when_the_forecast_is_old_or_missing(seeded: Seeded) -> None:
    old = outlook_of(seeded.ward_full, "Cardiologie", 24, 24)
    assert any("ne couvre plus les heures à venir" in w.value for w in old.warning)
    assert any("parcours forecast run" in w.value for w in old.warning)
    none = outlook_of(seeded.ward_quiet, "Orthopédie", 5, 20)
    assert any(i.value.startswith("Pas encore de prévision pour Orthopédie") for i in none.info)
    assert {m.label: m.value for m in none.metric}["Sorties attendues d'ici minuit"] == "—"


def test_bed_board_counts_the_departures_expected_today(seeded: Seeded, pg_url: str) -> None:
    seed_outlook(make_engine(pg_url), seeded, datetime.now(UTC))
    at = signed_in(Role.MANAGER)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Sorties attendues d'ici minuit"] != "—"
    assert any("Choisissez un établissement" in c.value for c in at.caption)


def test_a_coordinator_acknowledges_an_alert_as_themself(seeded: Seeded, pg_url: str) -> None:
    at = open_page(signed_in(Role.COORDINATOR, "inf.dupont"), roles.page("alertes"))
    shown = at.dataframe[0].value
    assert "Pas de suivi en ville après la sortie" in set(shown["Type"])
    assert "None" not in shown.astype(str).to_numpy()
    kind = at.selectbox(key="alert_kind")
    kind.set_value("no_follow_up").run()
    assert seeded.patient in set(at.dataframe[0].value["Patient"])
    chooser = at.selectbox(key="ack_choice")
    chooser.set_value(seeded.alert)
    assert seeded.patient in chooser.format_func(seeded.alert)
    at.text_input(key="ack_note").input("appel au médecin traitant")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert any("Alerte acquittée par inf.dupont" in m.value for m in at.success)
    with make_engine(pg_url).connect() as conn:
        trail = conn.execute(
            text("SELECT actor, role, note FROM alert_audit WHERE alert_id = :a"),
            {"a": seeded.alert},
        ).all()
    assert [tuple(r) for r in trail] == [("inf.dupont", "coordinator", "appel au médecin traitant")]


def test_opening_a_pathway_is_traced_once_per_opening(seeded: Seeded, pg_url: str) -> None:
    name = f"coord-{uuid.uuid4().hex[:6]}"
    at = open_page(signed_in(Role.COORDINATOR, name), roles.page("patient"))
    at.text_input(key="patient_search").input(seeded.prefix).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="patient_choice").value == seeded.patient
    assert any(f"Patient {seeded.patient}" == h.value for h in at.subheader)
    assert any("sorti, en attente de suivi" in m.value for m in at.markdown)
    at.run()  # a rerun of the same page is not a new opening
    open_page(at, roles.page("alertes"))
    open_page(at, roles.page("patient"))  # coming back and picking the patient again is
    at.text_input(key="patient_search").input(seeded.prefix).run()
    with make_engine(pg_url).connect() as conn:
        views = conn.execute(
            text("SELECT patient_id FROM access_audit WHERE username = :u AND action = :a"),
            {"u": name, "a": "view_patient"},
        ).scalars()
        assert list(views) == [seeded.patient, seeded.patient]
    audit = open_page(signed_in(Role.ADMIN), roles.page("journal"))
    audit.text_input(key="audit_user").input(name).run()
    trail = audit.dataframe[0].value
    assert trail["Patient"].tolist() == [seeded.patient, seeded.patient]
    assert set(trail["Action"]) == {"ouverture d'un parcours"}


def test_worklists_list_the_patient_discharged_without_follow_up(seeded: Seeded) -> None:
    at = signed_in(Role.COORDINATOR)
    assert [t.value for t in at.title] == ["Listes de travail"]
    assert [t.label.split(" (")[0] for t in at.tabs] == [
        "Aux urgences",
        "Sortis sans suivi",
        "Réhospitalisés à 30 jours",
        "Séjours longs",
    ]


def test_english_on_the_switch(seeded: Seeded) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["user"] = User("manager-en", Role.MANAGER)
    at.session_state["lang"] = "en"
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Bed board"]
    assert "Beds occupied" in {m.label for m in at.metric}


def test_forecast_page_shows_the_selected_model_and_its_accuracy_in_words(
    seeded: Seeded,
) -> None:
    at = open_page(signed_in(Role.MANAGER), roles.page("previsions"))
    at.radio(key="forecast_level").set_value("ward").run()
    at.selectbox(key="forecast_unit").set_value(seeded.ward_full).run()
    assert not at.exception, at.exception
    assert any(h.value == "Modèle retenu : Prophet" for h in at.subheader)
    assert any("intervalle de prévision à 80" in c.value for c in at.caption)
    # The legend names each model in full.
    colors = [
        layer["encoding"]["color"]
        for spec in vega_lite_specs(at)
        for layer in spec.get("layer", [])
        if layer.get("encoding", {}).get("color", {}).get("title") == "Prévision"
    ]
    assert colors and colors[0]["legend"]["labelLimit"] >= 600
    text = " ".join(m.value for m in at.markdown)
    assert "Sur les 8 dernières semaines, à 24 h, cette prévision s'est trompée de 3,1 lits" in text
    assert "la prévision naïve de 4,7" in text
    assert "MASE : 0,60" in text
    assert "81\u00a0% des valeurs observées" in text
    assert "21 patients présents maintenant, −5 sorties attendues, +6 admissions attendues" in text
    table = at.dataframe[0].value
    assert table["Modèle"].tolist() == ["Prophet (retenu)", "Naïve (dernière valeur)"]
    # The fan chart's hours are written the French way, not "12 PM".
    (chart,) = at.get("vega_lite_chart")
    assert '"format": "%d/%m %Hh"' in chart.proto.spec


def test_forecast_page_in_english_on_the_switch(seeded: Seeded) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["user"] = User("manager-en", Role.MANAGER)
    at.session_state["lang"] = "en"
    # The widgets' labels are translated in the script's session, which a test's set_value
    # cannot see: the choices go in through the session state.
    at.session_state["forecast_level"] = "ward"
    at.session_state["forecast_unit"] = seeded.ward_full
    at.run()
    open_page(at, roles.page("previsions"))
    assert [t.value for t in at.title] == ["Forecasts"]
    assert any(h.value == "Selected model: Prophet" for h in at.subheader)
    text = " ".join(m.value for m in at.markdown)
    assert "Over the last 8 weeks, at 24 h, this forecast was off by 3.1 beds on average" in text
    assert "the naive forecast by 4.7" in text
    assert "21 patients present now, −5 expected departures, +6 expected admissions" in text
    assert "81% of the observed values" in text
    table = at.dataframe[0].value
    assert table["Model"].tolist() == ["Prophet (selected)", "Naive (last value)"]
    assert {m.label for m in at.metric} >= {"Forecast at 24 h", "80% interval"}


def test_forecast_page_daily_view_shows_the_14_days_ahead_beside_the_midnight_census(
    seeded: Seeded, pg_url: str
) -> None:
    seed_daily(make_engine(pg_url), seeded)
    at = open_page(signed_in(Role.MANAGER), roles.page("previsions"))
    assert at.radio(key="forecast_view").options == ["Horaire, 72 h", "Journalier, 14 jours"]
    at.radio(key="forecast_view").set_value("daily").run()
    at.radio(key="forecast_level").set_value("ward").run()
    at.selectbox(key="forecast_unit").set_value(seeded.ward_full).run()
    assert not at.exception, at.exception
    assert any(
        h.value == "Modèle retenu : Ensemble (moyenne des trois meilleurs modèles)"
        for h in at.subheader
    )
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Prévision à 7 jours"] == "20 lits"
    assert metrics["Intervalle à 80\u00a0%"] == "17 – 23"
    text = " ".join(m.value for m in at.markdown)
    assert (
        "Sur les 8 dernières semaines, à 1 jour, cette prévision s'est trompée de 1,5 lit en "
        "moyenne ; la prévision naïve de 2,0." in text
    )
    assert "à 7 jours, cette prévision s'est trompée de 2,8 lits en moyenne ; la prévision " in text
    assert "naïve de 4,4." in text
    # The ensemble stores no terms: the stock–flow model's breakdown is shown, and said to be its.
    assert (
        "À 7 jours : 23 patients présents maintenant, −14 sorties attendues, +7 admissions "
        "attendues → 16 lits occupés. (décomposition du modèle stock–flux" in text
    )
    # Midnight UTC is 01:00 in Paris in November.
    assert any("minuit UTC, soit 01:00 heure locale" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert table["Modèle"].tolist()[0] == "Ensemble (moyenne des trois meilleurs modèles) (retenu)"
    assert table["Erreur à 1 jour"].tolist()[0] == "1,5"
    assert table["Erreur à 7 jours"].tolist()[0] == "2,8"
    # Short headings; what each measures, in beds, shows on hover.
    config = json.loads(at.dataframe[0].proto.columns)
    assert config["Erreur à 7 jours"]["help"] == (
        "Écart moyen, en lits, entre la prévision à 7 jours et ce qui a été observé."
    )
    assert "lits" in config["RMSE"]["help"]
    (chart,) = at.get("vega_lite_chart")
    assert '"format": "%d/%m"' in chart.proto.spec
    # The observed line: the census at the two seeded midnights (UTC), as Paris clocks read them.
    history_name = json.loads(chart.proto.spec)["layer"][0]["data"]["name"]
    (history,) = [d for d in chart.proto.datasets if d.name == history_name]
    past = pa.ipc.open_stream(history.data.data).read_pandas()
    assert past["y"].tolist() == [22, 23]
    assert [str(t) for t in past["ds"]] == ["2026-11-19 01:00:00", "2026-11-20 01:00:00"]
    shown = everything_shown(at)
    assert b"occupancy_daily" not in shown and b"stock_flow" not in shown


def test_forecast_page_daily_view_says_why_a_unit_has_no_daily_forecast(seeded: Seeded) -> None:
    at = open_page(signed_in(Role.MANAGER), roles.page("previsions"))
    at.radio(key="forecast_view").set_value("daily").run()
    at.radio(key="forecast_level").set_value("ward").run()
    at.selectbox(key="forecast_unit").set_value(seeded.ward_full).run()
    assert not at.exception, at.exception
    (info,) = at.info
    assert info.value.startswith("Pas encore de prévision journalière pour cette série")
    assert "28 jours entiers de recensement" in info.value
    assert len(at.dataframe) == 0
    # Back to the hourly view: the same unit's hourly forecast.
    at.radio(key="forecast_view").set_value("hourly").run()
    assert any(h.value == "Modèle retenu : Prophet" for h in at.subheader)


def test_hospital_sign_in_is_offered_when_oidc_is_configured(seeded: Seeded) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = {
        "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
        "cookie_secret": "test-cookie-secret",
        "client_id": "parcours-dashboard",
        "client_secret": "test-client-secret",
        "server_metadata_url": "https://keycloak.invalid/realms/chu/.well-known/openid-configuration",
    }
    at.run()
    assert not at.exception, at.exception
    labels = [b.label for b in at.button]
    assert "Se connecter avec le compte de l'établissement" in labels
    # Local accounts still work beside it.
    assert {ti.label for ti in at.text_input} == {"Identifiant", "Mot de passe"}


def test_an_oidc_identity_gets_its_role_only_from_an_account_here(
    seeded: Seeded, pg_url: str
) -> None:
    engine = make_engine(pg_url)
    email = f"dr.{uuid.uuid4().hex[:6]}@chu-dijon.example"
    assert accounts.oidc_user(engine, email) is None
    accounts.create_user(engine, email, Role.COORDINATOR, None, ["Organization/chu"])
    user = accounts.oidc_user(engine, email)
    assert user == User(email, Role.COORDINATOR, ("Organization/chu",))
    # No password was set: the local form cannot be used for this account.
    assert accounts.authenticate(engine, email, "") is None
    accounts.set_active(engine, email, False)
    assert accounts.oidc_user(engine, email) is None


def test_feed_health_names_the_element_at_fault(seeded: Seeded) -> None:
    at = signed_in(Role.INTEGRATOR)
    assert [t.value for t in at.title] == ["État des flux"]
    tables = [d.value for d in at.dataframe]
    feeds = next(t for t in tables if "Émetteur" in t.columns and "Acceptés" in t.columns)
    mine = feeds[feeds["Émetteur"] == seeded.integrator]
    assert mine["Acceptés"].tolist() == [120]
    rejected = next(t for t in tables if "Élément en faute" in t.columns)
    assert "Encounter.status" in set(rejected["Élément en faute"])
    progress = next(t for t in tables if "Partition" in t.columns)
    assert any(s.startswith("aucun rapport depuis") for s in progress["État"])


def test_feed_health_counts_hl7_messages_and_their_refusals(seeded: Seeded, pg_url: str) -> None:
    sender = f"{seeded.prefix}hl7"
    # A01 had refusals; every A03 was accepted (AA is counted with an empty reason).
    rows = [
        ("A01", "AA", "", 5),
        ("A01", "AE", "unknown patient", 2),
        ("A01", "AR", "sender not allowed", 1),
        ("A03", "AA", "", 4),
    ]
    now = datetime.now(UTC)
    with make_engine(pg_url).begin() as conn:
        for trigger, code, reason, n in rows:
            conn.execute(
                text(
                    "INSERT INTO hl7_message_counts VALUES "
                    "(:i, 'clinique-valmy', :t, :c, :r, :n, :at)"
                ),
                {"i": sender, "t": trigger, "c": code, "r": reason, "n": n, "at": now},
            )
    at = signed_in(Role.INTEGRATOR)
    hl7 = next(d.value for d in at.dataframe if "Établissement émetteur" in d.value.columns)
    mine = hl7[hl7["Émetteur"] == sender].set_index("Événement")
    assert mine.at["A01", "Messages"] == 8
    assert tuple(mine.loc["A01", ["Acceptés (AA)", "Erreurs (AE)", "Refusés (AR)"]]) == (5, 2, 1)
    assert mine.at["A01", "Motifs des refus"] == "unknown patient (2), sender not allowed (1)"
    # No refusal: a dash, as every empty cell of the dashboard, not a blank.
    assert (mine.at["A03", "Messages"], mine.at["A03", "Motifs des refus"]) == (4, "—")


def test_indicators_are_counts_only(seeded: Seeded) -> None:
    at = open_page(signed_in(Role.MANAGER), roles.page("indicateurs"))
    labels = {m.label for m in at.metric}
    assert {"Patients suivis", "Séjours", "Durée médiane de séjour"} <= labels
    assert len(at.dataframe) == 0


def test_an_admin_creates_and_disables_an_account(seeded: Seeded, pg_url: str) -> None:
    name = f"cadre-{uuid.uuid4().hex[:6]}"
    at = open_page(signed_in(Role.ADMIN), roles.page("utilisateurs"))
    at.text_input(key="new_user_name").input(name)
    at.selectbox(key="new_user_role").set_value(Role.MANAGER)
    at.text_input(key="new_user_password").input("court")
    at.button[0].click().run()
    assert any("un mot de passe a au moins 10 caractères" in e.value for e in at.error)
    at.text_input(key="new_user_name").input(name)
    at.selectbox(key="new_user_role").set_value(Role.MANAGER)
    at.text_input(key="new_user_password").input(PASSWORD)
    at.button[0].click().run()
    assert any(f"Compte {name} créé" in m.value for m in at.success)
    engine = make_engine(pg_url)
    assert accounts.authenticate(engine, name, PASSWORD) == User(name, Role.MANAGER)
    at.selectbox(key="toggle_user").set_value(name)
    at.button(key="toggle_user_button").click().run()
    assert not at.exception, at.exception
    assert accounts.authenticate(engine, name, PASSWORD) is None


def test_demo_accounts_one_per_role_with_new_passwords_each_run(pg_url: str) -> None:
    engine = make_engine(pg_url)
    first = accounts.ensure_demo_accounts(engine)
    assert set(first) == set(Role)
    for role, password in first.items():
        assert accounts.authenticate(engine, role.value, password) == User(role.value, role)
    again = accounts.ensure_demo_accounts(engine)
    assert all(again[r] != first[r] for r in Role)
    assert accounts.authenticate(engine, "admin", first[Role.ADMIN]) is None
    assert accounts.authenticate(engine, "admin", again[Role.ADMIN]) is not None
