"""The dashboard's words and formats: catalogues complete, French numbers and local times,
roles and their pages. Pure: no database, no Streamlit server."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from streamlit.string_util import validate_material_icon

from dashboard import i18n, labels, roles
from dashboard.accounts import Role
from dashboard.common import ROLE_LABELS
from dashboard.forecast_text import LEVEL_LABELS, MODEL_LABELS

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"


def messages_in_code() -> set[str]:
    found: set[str] = set()
    for _file, _line, msg, _comments, _ctx in extract_from_dir(
        str(DASHBOARD),
        method_map=[("**.py", "python")],
        keywords={
            "_": None,
            "_n": (1, 2),
            "Col": (2,),
            "translate": (2,),
            "translate_plural": (2, 3),
            "AccountError": None,
        },
    ):
        if isinstance(msg, tuple) and len(msg) == 2 and all(msg):
            found.update(msg)  # a singular and its plural
        else:
            found.add(msg if isinstance(msg, str) else next(m for m in msg if m))
    for words in (
        labels.ALERT_TYPES,
        labels.ALERT_STATUS,
        labels.STAGES,
        labels.LEVELS,
        labels.ACTIONS,
        ROLE_LABELS,
        MODEL_LABELS,
        LEVEL_LABELS,
    ):
        found.update(words.values())
    for page in roles.PAGES:
        found.update((page.title, page.section))
    return found


def test_every_message_has_an_english_translation() -> None:
    with (i18n.LOCALE_DIR / "en" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        english: set[str] = set()
        for m in read_po(f):
            # A plural message names its singular and plural, each with its English form.
            ids = (m.id,) if isinstance(m.id, str) else m.id
            forms = (m.string,) if isinstance(m.string, str) else m.string
            if all(ids) and all(forms):
                english.update(ids)
    assert sorted(messages_in_code() - english) == []
    assert i18n.translate("en", "Tableau des lits") == "Bed board"
    assert i18n.translate("fr", "Tableau des lits") == "Tableau des lits"
    assert i18n.languages() == ["fr", "en"]


@pytest.mark.parametrize(
    ("lang", "n", "shown"),
    [
        ("fr", 0, "0 patient"),
        ("fr", 1, "1 patient"),
        ("fr", 2, "2 patients"),
        ("en", 0, "0 patients"),
        ("en", 1, "1 patient"),
        ("en", 3, "3 patients"),
    ],
)
def test_counts_take_the_plural_of_the_language(lang: str, n: int, shown: str) -> None:
    """French writes 0 and 1 in the singular, English only 1."""
    assert i18n.translate_plural(lang, "{n} patient", "{n} patients", n) == shown
    full = i18n.translate_plural(
        lang,
        "{n} unité pleine ou au-delà : {names}",
        "{n} unités pleines ou au-delà : {names}",
        n,
        names="Cardiologie",
    )
    expected = {
        ("fr", False): f"{n} unité pleine ou au-delà : Cardiologie",
        ("fr", True): f"{n} unités pleines ou au-delà : Cardiologie",
        ("en", False): f"{n} ward at or above capacity: Cardiologie",
        ("en", True): f"{n} wards at or above capacity: Cardiologie",
    }
    assert full == expected[(lang, shown.endswith("s"))]


def test_messages_are_words_for_people_not_codes() -> None:
    for message in messages_in_code():
        outside_code = re.sub(r"`[^`]*`", "", message)
        assert not re.search(r"[a-z]_[a-z]", outside_code), message


def test_french_numbers_dates_and_local_times() -> None:
    assert i18n.number("fr", 1234.5, 1) == "1\u202f234,5"
    assert i18n.number("en", 1234.5, 1) == "1,234.5"
    assert i18n.number("fr", None) == "—"
    assert i18n.percent("fr", 0.92) == "92\u00a0%"
    winter = datetime(2026, 12, 5, 8, 6, tzinfo=UTC)
    assert i18n.when("fr", winter, "Europe/Paris") == "05/12/2026 09:06"
    # SQLite hands back naive UTC: read as UTC, shown in Paris summer time.
    assert i18n.when("fr", datetime(2026, 7, 1, 8, 0), "Europe/Paris") == "01/07/2026 10:00"
    assert i18n.when("fr", None, "Europe/Paris") == "—"
    column = [winter, None, "2026-07-01T08:00:00+00:00"]
    assert i18n.whens("fr", column, "Europe/Paris") == [
        "05/12/2026 09:06",
        "—",
        "01/07/2026 10:00",
    ]
    assert i18n.whens("en", column[:1], "Europe/Paris") == ["5 Dec 2026 09:06"]
    assert i18n.duration("fr", 3.5) == "3 h 30"
    assert i18n.duration("fr", 60) == "2,5 j"


def test_a_table_writes_a_dash_where_there_is_no_text() -> None:
    # An HL7 v2 sender with nothing refused has an empty list of reasons, not a missing one.
    assert [i18n.text(v) for v in ("", "  ", None, float("nan"), pd.NA)] == ["—"] * 5
    assert [i18n.text(v) for v in ("A01", 0, "unknown patient (2)")] == [
        "A01",
        "0",
        "unknown patient (2)",
    ]


@pytest.mark.parametrize(
    ("role", "pages"),
    [
        (Role.COORDINATOR, ["listes", "alertes", "patient"]),
        (Role.MANAGER, ["lits", "previsions", "indicateurs"]),
        (Role.INTEGRATOR, ["flux"]),
        (Role.ADMIN, [p.url_path for p in roles.PAGES]),
    ],
)
def test_each_role_has_its_pages(role: Role, pages: list[str]) -> None:
    assert [p.url_path for p in roles.allowed(role)] == pages


def test_icons_come_from_the_font_streamlit_serves() -> None:
    """Menu icons are Material Symbols, which Streamlit serves itself: an emoji needs a colour
    emoji font on the workstation, and shows as an empty box on the many that have none."""
    app = (Path(roles.__file__).parent / "streamlit_app.py").read_text(encoding="utf-8")
    icons = [p.icon for p in roles.PAGES] + re.findall(r":material/[a-z_]+:", app)
    assert len(icons) > len(roles.PAGES)
    for icon in icons:
        assert validate_material_icon(icon) == icon
    emoji = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
    assert not emoji.search(app)
    assert not any(emoji.search(p.icon) for p in roles.PAGES)


def test_charts_write_numbers_and_dates_in_the_language_chosen() -> None:
    fr, en = i18n.chart_locale("fr"), i18n.chart_locale("en")
    assert (fr["number"]["decimal"], en["number"]["decimal"]) == (",", ".")
    assert fr["number"]["thousands"].isspace() and en["number"]["thousands"] == ","
    # Vega's weeks start on Sunday.
    assert fr["time"]["days"][:2] == ["dimanche", "lundi"]
    assert en["time"]["days"][0] == "Sunday"
    assert fr["time"]["months"][1] == "février" and len(fr["time"]["shortMonths"]) == 12
