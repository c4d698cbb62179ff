"""The dashboard served by `parcours dashboard`, driven in a real headless Chromium.

Screenshots go to tests/e2e/screenshots/ for people to look at.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import text

from parcours.broker import free_port
from parcours.db import make_engine
from tests.e2e.browser import shot
from tests.seed import Seeded, seed
from tests.support import parcours_env, parcours_process, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def served(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, Seeded]]:
    seeded = seed(make_engine(pg_url), f"b{uuid.uuid4().hex[:6]}-")
    port = free_port()
    env = parcours_env(DATABASE_URL=pg_url)
    with parcours_process(["dashboard", "--port", str(port)], env, tmp_path / "dash.log"):
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, what="the Streamlit server")
        yield url, seeded


def test_manager_and_coordinator_use_the_dashboard(
    served: tuple[str, Seeded], browser: Browser, pg_url: str
) -> None:
    url, s = served
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    expect(page.get_by_role("heading", name="Bed board")).to_be_visible(timeout=30_000)
    expect(page.get_by_text(f"{s.prefix}Cardiologie").first).to_be_visible(timeout=30_000)
    # A partition's worker went silent (seeded): the board says it may be out of date.
    expect(page.get_by_text("this board may be out of date")).to_be_visible(timeout=30_000)
    shot(page, "bed_board")

    page.get_by_role("link", name="Forecasts").click()
    expect(page.get_by_role("heading", name="Prévisions")).to_be_visible(timeout=30_000)
    page.get_by_text("Unités de soins", exact=True).click()
    page.get_by_label("Série").click()
    page.get_by_role("option", name=f"{s.prefix}Cardiologie", exact=True).click()
    expect(page.get_by_text("Modèle retenu : Prophet")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("cette prévision s'est trompée de 3,1 lits")).to_be_visible(
        timeout=30_000
    )
    shot(page, "forecasts")

    page.get_by_role("link", name="Alerts").click()
    expect(page.get_by_role("heading", name="Alerts")).to_be_visible(timeout=30_000)
    page.get_by_label("Alert", exact=True).click()
    page.get_by_role("option").filter(has_text=f"{s.prefix}pat-1").click()
    page.get_by_label("Your name").fill("Dr Lefèvre")
    page.get_by_role("button", name="Acknowledge").click()
    expect(page.get_by_text("Acknowledged by Dr Lefèvre")).to_be_visible(timeout=30_000)
    shot(page, "alerts_acknowledged")
    with make_engine(pg_url).connect() as conn:
        who = conn.scalar(
            text("SELECT acknowledged_by FROM alerts WHERE alert_id = :a"), {"a": s.alert}
        )
    assert who == "Dr Lefèvre"

    page.get_by_role("link", name="Feed health").click()
    expect(page.get_by_role("heading", name="Feed health")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Rejections (").first).to_be_visible(timeout=30_000)
    # The seeded worker that went silent an hour ago is called out, with what to check.
    expect(page.get_by_text("without a report from their worker")).to_be_visible(timeout=30_000)
    shot(page, "feed_health")
    page.close()
