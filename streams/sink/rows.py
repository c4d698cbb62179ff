"""What the sink's jobs share: the batch a worker asks to write, what the write returns, rows of
the census's own types, and the windows of hours a batch may have changed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streams.core.census import Period, Place
from streams.core.events import (
    CanonicalEvent,
    EncounterRecorded,
    LocationRecorded,
    OrganizationRecorded,
)
from streams.core.projection import PatientRows

ALERT_MUTABLE = ("alert_type", "patient_id", "unit_id", "status", "raised_at", "resolved_at")
ALERT_COLUMNS = (*ALERT_MUTABLE, "message", "details")
# An empty window: only the hospital's live occupancy is rewritten.
NEVER_LO = datetime.max.replace(tzinfo=UTC)
NEVER_HI = datetime.min.replace(tzinfo=UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass
class SinkBatch:
    """What one batch asks the sink to write."""

    patients: list[PatientRows] = field(default_factory=list)
    locations: list[LocationRecorded] = field(default_factory=list)
    organizations: list[OrganizationRecorded] = field(default_factory=list)
    encounters: list[EncounterRecorded] = field(default_factory=list)
    # A batch of a backlog: its census hours may be left to a later write (`SqlSink`).
    backlog: bool = False


@dataclass
class SinkResult:
    """How many rows were written, and the census alerts that changed (for the alerts topic)."""

    rows: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)


def encounter_rows(events: Sequence[CanonicalEvent]) -> list[dict[str, Any]]:
    """One `encounters` row per encounter; within a batch the last version wins."""
    rows: dict[str, dict[str, Any]] = {}
    for ev in events:
        if isinstance(ev, EncounterRecorded):
            rows[ev.encounter_id] = {
                "encounter_id": ev.encounter_id,
                "patient_id": ev.patient_id,
                "class_code": ev.class_code,
                "status": ev.status,
                "period_start": ev.start,
                "period_end": ev.end,
                "service_provider": ev.service_provider,
                "source_version": ev.source.version,
            }
    return list(rows.values())


def place_of(row: Mapping[str, Any]) -> Place:
    """A `locations` row (or LocationRecorded fields) as a census Place."""
    return Place(
        location_id=row["location_id"],
        physical_type=row.get("physical_type"),
        part_of=row.get("part_of"),
        status=row.get("status") or "active",
        name=row.get("name"),
        service_code=row.get("service_code"),
        service_name=row.get("service_name"),
        organization=row.get("organization"),
    )


def period_of(row: Any) -> Period:
    """A `stay_locations` row as a census Period (SQLite gives naive UTC times back)."""
    return Period(
        row.stay_id,
        row.seq,
        row.hospital_id,
        row.location_id,
        as_utc(row.start_at) or row.start_at,
        as_utc(row.end_at),
        row.discharged,
        row.ward_ref,
    )


def location_row(ev: LocationRecorded) -> dict[str, Any]:
    """The `locations` row of a LocationRecorded event."""
    return {
        "location_id": ev.location_id,
        "name": ev.name,
        "physical_type": ev.physical_type,
        "part_of": ev.part_of,
        "status": ev.status,
        "service_code": ev.service_code,
        "service_name": ev.service_name,
        "organization": ev.organization,
        "source_version": ev.source.version,
    }


@dataclass
class Window:
    """Hours of one hospital a batch may have changed."""

    lo: datetime
    hi: datetime

    @property
    def empty(self) -> bool:
        """No hour: only the hospital's live occupancy is rewritten."""
        return self.lo > self.hi

    def widen(self, lo: datetime | None, hi: datetime | None = None) -> None:
        if lo is not None and lo < self.lo:
            self.lo = lo
        if hi is not None and hi > self.hi:
            self.hi = hi


def widen_window(
    windows: dict[str, Window], hospital: str, lo: datetime | None, hi: datetime | None
) -> None:
    lo, hi = as_utc(lo), as_utc(hi)
    if lo is None:
        return
    hi = hi or lo
    if hospital in windows:
        windows[hospital].widen(lo, hi)
    else:
        windows[hospital] = Window(lo, max(lo, hi))
