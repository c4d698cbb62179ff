"""Screenshots of what a person sees, saved for people to look at (tests/e2e/screenshots/)."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page

SHOTS = Path(__file__).resolve().parent / "screenshots"


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    # Tables and charts paint on canvases after the text shows; let them finish for the picture.
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
