"""Instants, in one place: read FHIR times, store UTC, read back aware, show in the territory's
zone.

Every instant Parcours keeps is an aware `datetime`. Feeds send offsets (`+05:30`, `-05:00`, `Z`);
SQL stores UTC (SQLite has no time zone type, so the UTC wall time is stored and read back as UTC,
see `parcours.db.models.UTCDateTime`); people read times in `PARCOURS_TIMEZONE` (Europe/Paris by
default). Durations are differences of aware instants, so a ward period of 2 real hours across a
daylight-saving change is 2 hours long.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo


class TimeFormatError(ValueError):
    """Text that is not a FHIR date, dateTime or instant."""


# Care happens between these instants. A time outside them (year 1, year 9999: valid FHIR and
# HL7) is a mistake or an attack, and would make the census count every hour from or up to it:
# the gateway, the MLLP listener and the stream worker refuse it.
EARLIEST_CARE = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_CARE = datetime(2100, 1, 1, tzinfo=UTC)


def outside_care_years(value: object) -> bool:
    """A FHIR date or time whose year, as written, is outside EARLIEST_CARE–LATEST_CARE. The
    year as written, not the instant: the gateway and the worker must agree on
    `2099-12-31T23:30:00-01:00` (an instant of 2100) and on a date the worker reads at midnight
    in the territory's zone (`1900-01-01` in Paris is an instant of 1899)."""
    year = value[:4] if isinstance(value, str) else ""
    return year.isdigit() and not EARLIEST_CARE.year <= int(year) < LATEST_CARE.year


def parse_fhir(value: object, zone: tzinfo = UTC) -> datetime | None:
    """A FHIR date/dateTime/instant as an aware datetime (None for None or '').

    A year or year-month (allowed by FHIR dateTime) is read as its first day; a date, which
    carries no zone, as its midnight in `zone` (the territory's, where it was written). A time
    without a zone breaks FHIR's rule and is read as UTC.
    The result is in UTC: every instant then shares the one `UTC` object, which pickles and
    compares faster than an offset object per value.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TimeFormatError(f"{value!r} is not a FHIR dateTime")
    text = value.replace("Z", "+00:00")
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        if text[16:19] == ":60" and text[10:11] == "T":
            # FHIR's pattern lets a leap second through; no instant of Python's clock is one.
            raise TimeFormatError(f"{value!r} names no instant (a leap second: second 60)") from exc
        raise TimeFormatError(f"{value!r} is not a FHIR dateTime") from exc
    if parsed.tzinfo is None:
        local = zone if len(text) == 10 else UTC
        try:
            return parsed.replace(tzinfo=local).astimezone(UTC)
        except OverflowError as exc:  # 0001-01-01 in a zone east of UTC
            raise TimeFormatError(f"{value!r} is out of range") from exc
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:00:00-14:00 is after the last UTC year
        raise TimeFormatError(f"{value!r} is out of range") from exc


def to_utc(value: datetime) -> datetime:
    """The same instant in UTC; a naive value is taken as UTC already (how SQLite returns it)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utc_or_none(value: datetime | None) -> datetime | None:
    """`to_utc`, passing None through."""
    return None if value is None else to_utc(value)


@lru_cache(maxsize=16)
def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (cached)."""
    return ZoneInfo(name)


def to_local(value: datetime, tz: str) -> datetime:
    """The instant as read on a clock in `tz` (e.g. Europe/Paris)."""
    return to_utc(value).astimezone(zone(tz))


def format_local(value: datetime | str | None, tz: str, fmt: str = "%d/%m/%Y %H:%M") -> str:
    """An instant (or its ISO text) as people in `tz` read it; '—' when unknown."""
    if value is None or value == "":
        return "—"
    instant = parse_fhir(value) if isinstance(value, str) else value
    assert instant is not None
    return to_local(instant, tz).strftime(fmt)
