"""Words and formats for people: gettext catalogues, French first, and local times and numbers.

Messages are written in French in the code (the language of the people who use Parcours) and
looked up in `dashboard/locale/<lang>/LC_MESSAGES/messages.po`: English is one file, a third
language is another. Numbers and dates use the language's conventions (Babel), times are shown
in the territory's time zone (`PARCOURS_TIMEZONE`). No Streamlit import: the caller says which
language is chosen.
"""

from __future__ import annotations

import gettext
import io
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
from babel.dates import format_datetime, get_day_names, get_month_names
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent, get_decimal_symbol, get_group_symbol

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DEFAULT = "fr"
EMPTY = "—"
# The language each catalogue's numbers and dates follow.
BABEL_LOCALE = {"fr": "fr_FR", "en": "en_GB"}


def languages() -> list[str]:
    """French, then every language that has a catalogue."""
    found = sorted(p.name for p in LOCALE_DIR.iterdir() if (p / "LC_MESSAGES").is_dir())
    return [DEFAULT, *(lang for lang in found if lang != DEFAULT)]


@cache
def catalogue(lang: str) -> gettext.NullTranslations:
    """The compiled catalogue of `lang` (the messages as written, for French or a missing one)."""
    po = LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"
    if lang == DEFAULT or not po.exists():
        return gettext.NullTranslations()
    with po.open("rb") as f:
        cat = read_po(f, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, cat)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def translate(lang: str, message: str, **values: Any) -> str:
    """`message` in `lang`, with `{name}` fields filled from `values`."""
    text = catalogue(lang).gettext(message)
    return text.format(**values) if values else text


def translate_plural(lang: str, singular: str, plural: str, n: int, **values: Any) -> str:
    """The form of `n` in `lang` (`singular` and `plural` written in French, where 0 and 1 take
    the singular), with `{n}` and `{name}` fields filled."""
    cat = catalogue(lang)
    if isinstance(cat, gettext.GNUTranslations):
        text = cat.ngettext(singular, plural, n)
    else:
        text = singular if n <= 1 else plural
    return text.format(n=n, **values)


def babel_locale(lang: str) -> str:
    """The Babel locale whose number and date formats `lang` uses."""
    return BABEL_LOCALE.get(lang, lang)


def number(lang: str, value: float | None, digits: int = 0) -> str:
    """A number as people of `lang` write it (1 234,5 in French); a dash when missing."""
    if value is None or pd.isna(value):
        return EMPTY
    pattern = "#,##0" + ("." + "0" * digits if digits else "")
    return format_decimal(value, format=pattern, locale=babel_locale(lang))


@cache
def chart_locale(lang: str) -> dict[str, Any]:
    """Vega's number and time locale for `lang` (charts' axes and tooltips): in French a
    decimal comma, a narrow space between thousands, French month and day names."""
    loc = babel_locale(lang)
    # Vega counts days from Sunday, Babel from Monday.
    days = [get_day_names("wide", locale=loc)[(i + 6) % 7] for i in range(7)]
    short_days = [get_day_names("abbreviated", locale=loc)[(i + 6) % 7] for i in range(7)]
    return {
        "number": {
            "decimal": get_decimal_symbol(loc),
            "thousands": get_group_symbol(loc),
            "grouping": [3],
            "currency": ["", "\u00a0€"],
        },
        "time": {
            "dateTime": "%A %e %B %Y, %X",
            "date": "%d/%m/%Y",
            "time": "%H:%M:%S",
            "periods": ["AM", "PM"],
            "days": days,
            "shortDays": short_days,
            "months": [get_month_names("wide", locale=loc)[m] for m in range(1, 13)],
            "shortMonths": [get_month_names("abbreviated", locale=loc)[m] for m in range(1, 13)],
        },
    }


def text(value: Any) -> str:
    """A stored text as a table shows it; a dash when there is none, missing or blank (an HL7
    v2 sender with no refusal has an empty list of reasons)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return EMPTY
    written = str(value)
    return written if written.strip() else EMPTY


def percent(lang: str, value: float | None) -> str:
    """A ratio as a percentage (92 %); a dash when missing."""
    if value is None or pd.isna(value):
        return EMPTY
    return format_percent(value, locale=babel_locale(lang))


def as_local(value: Any, tz: str) -> datetime | None:
    """An instant (aware, or naive UTC as SQLite returns it, or ISO text) in the zone `tz`."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.tz_convert(ZoneInfo(tz)).to_pydatetime()


def when(lang: str, value: Any, tz: str, with_date: bool = True) -> str:
    """An instant as the ward clock shows it: 05/12/2026 14:30 in French; a dash when missing."""
    local = as_local(value, tz)
    if local is None:
        return EMPTY
    pattern = "dd/MM/yyyy HH:mm" if with_date else "HH:mm"
    if lang == "en":
        pattern = "d MMM yyyy HH:mm" if with_date else "HH:mm"
    return format_datetime(local, pattern, locale=babel_locale(lang))


STRFTIME = {"fr": ("%d/%m/%Y %H:%M", "%H:%M"), "en": ("%-d %b %Y %H:%M", "%H:%M")}


def whens(lang: str, values: Any, tz: str, with_date: bool = True) -> list[str]:
    """`when` for a whole column at once (a table of thousands of rows formats in milliseconds)."""
    stamps = pd.to_datetime(pd.Series(list(values), dtype=object), utc=True, errors="coerce")
    pattern = STRFTIME.get(lang, STRFTIME[DEFAULT])[0 if with_date else 1]
    text = stamps.dt.tz_convert(ZoneInfo(tz)).dt.strftime(pattern)
    return [EMPTY if pd.isna(t) else str(t) for t in text]


def duration(lang: str, hours: float | None) -> str:
    """A duration in hours and minutes under two days, in days above (3 h 20, 4,5 j)."""
    if hours is None or pd.isna(hours):
        return EMPTY
    if hours < 48:
        whole = int(hours)
        minutes = round((hours - whole) * 60)
        if minutes == 60:
            whole, minutes = whole + 1, 0
        return f"{whole} h {minutes:02d}"
    return translate(lang, "{days} j", days=number(lang, hours / 24, 1))
