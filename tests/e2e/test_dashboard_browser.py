"""The dashboard served by `parcours dashboard`, driven in a real headless Chromium, one test per
role: sign in, every page the role may open, a page it may not, in French; a coordinator's
acknowledgement and a pathway opening checked in SQL.

Screenshots go to tests/e2e/screenshots/ for people to look at.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from sqlalchemy import text

from dashboard import accounts, roles, sessions
from dashboard.accounts import Role, User
from parcours.broker import free_port
from parcours.db import make_engine
from tests.e2e.browser import shot
from tests.seed import Outlook, Seeded, seed, seed_daily, seed_every_model_scored, seed_outlook
from tests.support import parcours_env, parcours_process, wait_until

pytestmark = pytest.mark.e2e
PASSWORD = "mot de passe de test"
TIMEOUT = 30_000


@dataclass(frozen=True)
class Served:
    url: str
    seeded: Seeded
    outlook: Outlook
    users: dict[Role, str]
    # The models of the full ward's daily backtest.
    scored: list[str]


@pytest.fixture(scope="module")
def served(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    engine = make_engine(pg_url)
    seeded = seed(engine, f"b{uuid.uuid4().hex[:6]}-")
    outlook = seed_outlook(engine, seeded, datetime.now(UTC))
    seed_daily(engine, seeded)
    scored = seed_every_model_scored(engine, seeded)
    users = {role: f"{role.value}-{seeded.prefix}" for role in Role}
    for role, name in users.items():
        # The coordinator follows this test's hospital only: their worklists hold its patients.
        scope = [seeded.hospital] if role is Role.COORDINATOR else []
        accounts.create_user(engine, name, role, PASSWORD, scope)
    port = free_port()
    work = tmp_path_factory.mktemp("dash")
    # The dashboard makes its session key in its data folder: this test's, not the checkout's.
    env = parcours_env(DATABASE_URL=pg_url, PARCOURS_DATA_DIR=str(work))
    log = work / "dash.log"
    with parcours_process(["dashboard", "--port", str(port)], env, log):
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, what="the Streamlit server")
        # Streamlit's metrics endpoint answers anyone: the dashboard hides it.
        assert httpx.get(f"{url}/_stcore/metrics", timeout=10).status_code == 404
        yield Served(url, seeded, outlook, users, scored)


def settled(page: Page) -> None:
    """Wait for the end of the script run under way. Call it once something only that run draws
    is visible (it has begun): what the page shows then is that run's, whole."""
    expect(page.get_by_test_id("stApp")).to_have_attribute(
        "data-test-script-state", "notRunning", timeout=TIMEOUT
    )


def sign_in(browser: Browser, served: Served, role: Role, path: str = "") -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, locale="fr-FR")
    page.goto(f"{served.url}/{path}")
    expect(page.get_by_role("heading", name="Connexion à Parcours")).to_be_visible(timeout=TIMEOUT)
    # Nothing about patients before signing in.
    settled(page)
    assert served.seeded.patient not in page.content()
    page.get_by_label("Identifiant").fill(served.users[role])
    page.get_by_label("Mot de passe").fill(PASSWORD)
    page.get_by_role("button", name="Se connecter", exact=True).click()
    return page


def pick_row(grid: Locator, text: str) -> None:
    """Click the row of `grid` that shows `text`: the grid paints on a canvas, so the click goes
    to the row's position, read from the cell's place in the grid's accessible table."""
    cell = grid.locator("td[role=gridcell]").filter(has_text=re.compile(f"^{re.escape(text)}$"))
    expect(cell).to_be_attached(timeout=TIMEOUT)
    row = int(str(cell.get_attribute("data-testid")).rsplit("-", 1)[1])
    click_row(grid, row)


def click_row(grid: Locator, row: int) -> None:
    """Click the selector of the grid's row `row` (0 is the first under the header). A locator
    click waits for the grid to stop moving and to be what receives the click: charts above it
    still drawing push it down the page."""
    grid.click(position={"x": 15, "y": 35 + 35 * row + 18})


def axis_label(chart: Locator, text: str) -> Locator:
    """The label `text`, whole, among the texts of a chart (Vega draws them in SVG; a label too
    long for its room is drawn cut, ending in « … »)."""
    return chart.locator("text").filter(has_text=re.compile(f"^{re.escape(text)}$"))


def scrolls_inside(grid: Locator) -> bool:
    """Whether a table's rows overflow its height, or its columns its width (the grid scrolls
    them in its own scroller)."""
    return bool(
        grid.locator(".dvn-scroller").evaluate(
            "e => e.scrollHeight > e.clientHeight || e.scrollWidth > e.clientWidth"
        )
    )


def wide_tables(page: Page) -> list[str]:
    """The first headings of the page's tables whose columns overflow their width (the grid
    then scrolls them sideways, and the last columns are out of sight)."""
    wide = []
    for grid in page.get_by_test_id("stDataFrame").filter(visible=True).all():
        if grid.locator(".dvn-scroller").evaluate("e => e.scrollWidth > e.clientWidth"):
            wide.append(grid.locator("th").first.inner_text())
    return wide


def visit(page: Page, spec: roles.PageSpec, shot_name: str) -> None:
    page.get_by_test_id("stSidebar").get_by_role("link", name=spec.title).click()
    # The page's own title: any title would match the page being left, until the new one runs.
    heading = page.get_by_test_id("stMain").get_by_role(
        "heading", level=1, name=spec.title, exact=True
    )
    expect(heading).to_be_visible(timeout=TIMEOUT)
    settled(page)
    expect(page.get_by_text("Accès refusé")).to_have_count(0)
    shot(page, shot_name)
    written_for_people(page.get_by_test_id("stMain").inner_text(), spec.url_path)


# Icon names Streamlit writes as text for its Material icon font (the expander's arrow).
ICONS = re.compile(r"\b(keyboard|arrow|expand|chevron)_[a-z_]+\b")


def written_for_people(shown: str, where: str) -> None:
    """What a page shows, tables and chart axes included: no code names, no empty "None", no UTC
    offsets or ISO times, no English 12-hour clock, no error."""
    text = ICONS.sub("", shown)
    assert not re.search(r"\b[a-z]+_[a-z_]+\b", text), (
        where,
        re.findall(r"\b[a-z]+_[a-z_]+\b", text),
    )
    assert not re.search(r"\b(None|NaN|NaT|nan)\b", text), where
    assert not re.search(r"\+00:00|\bUTC\b|\d{4}-\d\d-\d\dT\d\d", text), where
    assert not re.search(r"\b\d{1,2} ?(AM|PM)\b", text), where
    assert "Traceback" not in text and "Exception" not in text, where


def refused(browser: Browser, served: Served, role: Role, spec: roles.PageSpec) -> None:
    """Opening a page of another role by its address: signed in, then told it is refused."""
    page = sign_in(browser, served, role, spec.url_path)
    expect(page.get_by_text("Accès refusé").first).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_text("Demandez à un administrateur").first).to_be_visible()
    settled(page)
    assert served.seeded.patient not in page.content()
    shot(page, f"{role.value}_refused_{spec.url_path}")
    page.close()


def test_manager(served: Served, browser: Browser) -> None:
    s = served.seeded
    page = sign_in(browser, served, Role.MANAGER)
    expect(page.get_by_role("heading", name="Tableau des lits")).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_text(f"{s.prefix}Cardiologie").first).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_text("Lits libres").first).to_be_visible()
    expect(page.get_by_text("Occupation des unités heure par heure")).to_be_visible()
    # A partition's worker went silent (seeded): the board says it may be out of date.
    expect(page.get_by_text("ce tableau peut ne pas être à jour")).to_be_visible(timeout=TIMEOUT)
    # Today's departures, read from the hospital's forecast made this hour.
    departures = page.get_by_test_id("stMetric").filter(has_text="Sorties attendues d'ici minuit")
    expect(departures.get_by_test_id("stMetricValue")).not_to_have_text("—")
    # The establishments' chart names each one in full on its axis, not « …CHU Dijon Bourg… ».
    bars = page.get_by_test_id("stVegaLiteChart").first
    expect(axis_label(bars, served.outlook.name)).to_have_count(1, timeout=TIMEOUT)
    shot(page, "manager_bed_board")
    # A click on the hospital's row shows its last days beside the forecast band.
    pick_row(page.get_by_test_id("stDataFrame").first, served.outlook.name)
    expect(page.get_by_text(f"{served.outlook.name} : occupation et prévision")).to_be_visible(
        timeout=TIMEOUT
    )
    expect(page.get_by_text("De quoi la prévision est faite")).to_be_visible()
    expect(
        page.get_by_text(
            "Dans 24 h : 29 patients présents maintenant, −8 sorties attendues, +6 admissions "
            "attendues → 27 lits occupés."
        )
    ).to_be_visible()
    expect(page.get_by_text("zone bleue : son intervalle à 80\u00a0%")).to_be_visible()
    expect(page.get_by_text("Prévision dans 24 h").first).to_be_visible()
    # The band chart is drawn, with its legend and the present marked.
    chart = page.get_by_role("img").filter(has_text="Observé").filter(has_text="maintenant")
    expect(chart).to_be_visible(timeout=TIMEOUT)
    chart.scroll_into_view_if_needed()
    shot(page, "manager_bed_board_forecast")
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_role("link", name="Alertes")).to_have_count(0)
    for spec in roles.allowed(Role.MANAGER):
        visit(page, spec, f"manager_{spec.url_path}")
        assert s.patient not in page.content(), spec.url_path
    # The open alerts are counted in whole numbers, on an axis written in French.
    visit(page, roles.page("indicateurs"), "manager_indicateurs")
    counts = page.get_by_role("img").filter(has_text="Alertes ouvertes")
    expect(counts).to_contain_text("Pas de suivi", timeout=TIMEOUT)
    assert not re.search(r"\d[.,]\d", counts.text_content() or "")
    # The forecast of a ward: its chosen model and its accuracy in words.
    visit(page, roles.page("previsions"), "manager_previsions")
    # Choosing the level reruns the page, and the list keeps its label: opening it before the
    # rerun has drawn the wards' list would type into the hospitals' list that is replaced.
    unit_box = page.get_by_role("combobox", name="Série")
    shown = unit_box.input_value()
    page.get_by_text("Unités de soins", exact=True).click()
    expect(unit_box).not_to_have_value(shown, timeout=TIMEOUT)
    # The list holds every series of the session's database: type to filter it.
    page.get_by_label("Série").click()
    page.keyboard.type(f"{s.prefix}Cardiologie")
    page.get_by_role("option", name=f"{s.prefix}Cardiologie", exact=True).click()
    expect(page.get_by_text("Modèle retenu : Prophet")).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_text("cette prévision s'est trompée de 3,1 lits")).to_be_visible(
        timeout=TIMEOUT
    )
    shot(page, "manager_forecast_ward")
    # The same ward, 14 days ahead: its daily forecast, selected as the ensemble of three models.
    page.get_by_text("Journalier, 14 jours", exact=True).click()
    expect(
        page.get_by_text("Modèle retenu : Ensemble (moyenne des trois meilleurs modèles)")
    ).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_text("à 7 jours, cette prévision s'est trompée de 2,8 lits")).to_be_visible(
        timeout=TIMEOUT
    )
    expect(page.get_by_text("minuit UTC, soit 01:00 heure locale")).to_be_visible()
    settled(page)
    assert "occupancy_daily" not in page.content()
    shot(page, "manager_forecast_ward_daily")
    # Every model's backtest row in sight at once: the table holds them all, without a scrollbar.
    scores = page.get_by_test_id("stDataFrame").filter(has_text="Erreur à 7 jours")
    expect(scores.locator("td[data-testid^='glide-cell-0-']")).to_have_count(
        len(served.scored), timeout=TIMEOUT
    )
    scores.scroll_into_view_if_needed()
    shot(page, "manager_forecast_accuracy")
    assert not scrolls_inside(scores)
    page.close()
    refused(browser, served, Role.MANAGER, roles.page("patient"))


def test_coordinator_acknowledges_an_alert_and_opens_a_pathway(
    served: Served, browser: Browser, pg_url: str
) -> None:
    s, me = served.seeded, served.users[Role.COORDINATOR]
    page = sign_in(browser, served, Role.COORDINATOR)
    expect(page.get_by_role("heading", name="Listes de travail")).to_be_visible(timeout=TIMEOUT)
    page.get_by_role("tab", name="Sortis sans suivi").click()
    grid = page.get_by_test_id("stDataFrame").filter(visible=True).first
    expect(grid.get_by_text(s.patient)).to_be_attached(timeout=TIMEOUT)
    shot(page, "coordinator_worklists")
    # A click on the row's selector opens the patient's pathway (canvas grid: by position).
    click_row(grid, 0)
    expect(page.get_by_role("heading", name=f"Patient {s.patient}")).to_be_visible(timeout=TIMEOUT)
    shot(page, "coordinator_worklist_opens_patient")

    visit(page, roles.page("alertes"), "coordinator_alerts")
    page.get_by_label("Alerte", exact=True).click()
    # The list is long on a shared database: typing narrows it, as a coordinator would.
    page.keyboard.type(s.patient)
    page.get_by_role("option").filter(has_text=s.patient).click()
    page.get_by_role("button", name="Acquitter").click()
    expect(page.get_by_text(f"Alerte acquittée par {me}")).to_be_visible(timeout=TIMEOUT)
    shot(page, "coordinator_alert_acknowledged")
    with make_engine(pg_url).connect() as conn:
        trail = conn.execute(
            text("SELECT actor, role FROM alert_audit WHERE alert_id = :a"), {"a": s.alert}
        ).all()
    assert [tuple(r) for r in trail] == [(me, "coordinator")]

    visit(page, roles.page("patient"), "coordinator_pathway_search")
    page.get_by_label("Rechercher un patient").fill(s.prefix)
    page.get_by_label("Rechercher un patient").press("Enter")
    expect(page.get_by_role("heading", name=f"Patient {s.patient}")).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_text("sorti, en attente de suivi")).to_be_visible()
    shot(page, "coordinator_pathway")
    with make_engine(pg_url).connect() as conn:
        opened = conn.execute(
            text(
                "SELECT patient_id FROM access_audit "
                "WHERE username = :u AND action = 'view_patient'"
            ),
            {"u": me},
        ).scalars()
        # Once from the worklist, once from the search.
        assert list(opened) == [s.patient, s.patient]
    page.close()
    refused(browser, served, Role.COORDINATOR, roles.page("lits"))


def test_integrator(served: Served, browser: Browser) -> None:
    page = sign_in(browser, served, Role.INTEGRATOR)
    expect(page.get_by_role("heading", name="État des flux")).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_text("Rejets (").first).to_be_visible(timeout=TIMEOUT)
    # The seeded worker that went silent an hour ago is called out, with what to check.
    # Other tests' workers share the database: one partition or many, in the singular or plural.
    silent = re.compile(r"\d+ partitions? sans rapport de (son|leur) traitement")
    expect(page.get_by_text(silent)).to_be_visible(timeout=TIMEOUT)
    settled(page)
    shot(page, "integrator_feed_health")
    assert served.seeded.patient not in page.content()
    # The processing table's columns, short by design, all fit (tables of free text, the
    # rejections' diagnostics, may scroll).
    assert "Topic" not in wide_tables(page)
    page.close()
    refused(browser, served, Role.INTEGRATOR, roles.page("alertes"))


def test_admin_sees_every_page_and_the_journal(served: Served, browser: Browser) -> None:
    page = sign_in(browser, served, Role.ADMIN)
    expect(page.get_by_role("heading", name="Tableau des lits")).to_be_visible(timeout=TIMEOUT)
    for spec in roles.PAGES:
        visit(page, spec, f"admin_{spec.url_path}")
    expect(page.get_by_text("Consultations et connexions")).to_be_visible()
    page.close()


def test_a_sign_in_survives_a_reload_until_signing_out(
    served: Served, browser: Browser, pg_url: str
) -> None:
    me = served.users[Role.MANAGER]
    page = sign_in(browser, served, Role.MANAGER)
    expect(page.get_by_role("heading", name="Tableau des lits")).to_be_visible(timeout=TIMEOUT)

    def session_cookie() -> dict[str, Any] | None:
        found = [c for c in page.context.cookies() if c["name"] == sessions.COOKIE]
        return dict(found[0]) if found else None

    wait_until(lambda: session_cookie() is not None, 30, what="the session cookie")
    cookie = session_cookie()
    assert cookie is not None
    # Page scripts cannot read it, other sites' requests do not carry it.
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert sessions.COOKIE not in str(page.evaluate("document.cookie"))
    page.reload()
    expect(page.get_by_role("heading", name="Tableau des lits")).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_test_id("stSidebar").get_by_text(me)).to_be_visible()
    shot(page, "manager_after_reload")

    page.get_by_role("button", name="Se déconnecter").click()
    expect(page.get_by_role("heading", name="Connexion à Parcours")).to_be_visible(timeout=TIMEOUT)
    wait_until(lambda: session_cookie() is None, 30, what="the session cookie to be cleared")
    page.reload()
    expect(page.get_by_role("heading", name="Connexion à Parcours")).to_be_visible(timeout=TIMEOUT)
    with make_engine(pg_url).connect() as conn:
        actions = conn.execute(
            text("SELECT action FROM access_audit WHERE username = :u ORDER BY access_id"),
            {"u": me},
        ).scalars()
        assert list(actions)[-2:] == ["sign_in", "sign_out"]
    page.close()


def test_a_kept_session_ends_with_a_sign_out_elsewhere(
    served: Served, browser: Browser, pg_url: str
) -> None:
    """The cookie of a browser that did not sign out is refused once the account signed out."""
    page = sign_in(browser, served, Role.INTEGRATOR)
    expect(page.get_by_role("heading", name="État des flux")).to_be_visible(timeout=TIMEOUT)
    wait_until(
        lambda: any(c["name"] == sessions.COOKIE for c in page.context.cookies()),
        30,
        what="the session cookie",
    )
    accounts.record_sign_out(
        make_engine(pg_url), User(served.users[Role.INTEGRATOR], Role.INTEGRATOR)
    )
    page.reload()
    expect(page.get_by_role("heading", name="Connexion à Parcours")).to_be_visible(timeout=TIMEOUT)
    page.close()
