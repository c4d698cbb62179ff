"""SQL tables of the care pathway and of the census, written by the stream worker's sink.

Every table here is a *projection*: the sink rewrites whole rows derived from the per-patient
pathway state (and, for the census, from the stored stays), so replaying any part of the raw topic
leaves the tables exactly as a clean run would. Nothing here is incremented in place.

- `pathway_states`: where each patient is on the pathway (`PatientState.view()`, as JSON), and
  the digest of the records below as last written for the patient; the whole state, with its
  event log, is the Faust table's value.
- `stays`, `stay_locations`: inpatient stays and the ward/bed periods inside them. A stay with no
  `Encounter.location` (Synthea) still gets one `stay_locations` row at hospital level, so the
  census reads one table.
- `ed_visits`, `community_visits`, `referrals`, `appointments`: the other pathway steps (booked
  appointments are the known demand that forecasting counts among arrivals).
- `alerts` (+ `alert_audit`, the acknowledgement trail the dashboard writes).
- `locations`: the Location hierarchy (bed → ward → hospital); `location_occupancy`: live
  occupancy and capacity per bed, ward, service and hospital; `census_hourly`: hourly counts per
  unit, the series that forecasting reads (hours with nothing to count have no row: read them as 0).
- `sink_versions`: a counter per input that every worker's sink keeps in memory (the Location
  tree): a worker that sees another's bump reads it again.
- `stream_progress`: per raw partition, the last offset its worker applied, the end of the
  partition, and when the worker said so (a worker that stops reporting is seen as such).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from parcours.db.models import Base, UTCDateTime

ID = String(128)
REF = String(256)


class PathwayStateRow(Base):
    """Where one patient is on the pathway (`PatientState.view()`)."""

    __tablename__ = "pathway_states"

    patient_id: Mapped[str] = mapped_column(ID, primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The digest of the patient's records as the sink last wrote them (`records_digest`).
    rows_digest: Mapped[int | None] = mapped_column(BigInteger)


class StayRow(Base):
    """One inpatient stay (an IMP Encounter)."""

    __tablename__ = "stays"

    stay_id: Mapped[str] = mapped_column(ID, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ID)
    hospital_id: Mapped[str | None] = mapped_column(REF)
    admitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    discharged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disposition: Mapped[str | None] = mapped_column(String(64))
    admit_source: Mapped[str | None] = mapped_column(String(64))
    from_ed_encounter: Mapped[str | None] = mapped_column(ID)
    los_hours: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_stays_patient_id", "patient_id"),
        Index("ix_stays_hospital_id", "hospital_id"),
    )


class StayLocationRow(Base):
    """A period of a stay in one place: a bed, a ward, or (no location known) the hospital."""

    __tablename__ = "stay_locations"

    stay_id: Mapped[str] = mapped_column(ID, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ID)
    hospital_id: Mapped[str] = mapped_column(REF)
    location_id: Mapped[str | None] = mapped_column(REF)
    # The ward the feed named; the resolved `ward_id/bed_id` follow the Location tree.
    ward_ref: Mapped[str | None] = mapped_column(REF)
    ward_id: Mapped[str | None] = mapped_column(REF)
    bed_id: Mapped[str | None] = mapped_column(REF)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    discharged: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (
        Index("ix_stay_locations_hospital_start", "hospital_id", "start_at"),
        Index("ix_stay_locations_hospital_end", "hospital_id", "end_at"),
        Index("ix_stay_locations_location_id", "location_id"),
        Index("ix_stay_locations_ward_id", "ward_id"),
        Index("ix_stay_locations_patient_id", "patient_id"),
    )


class EdVisitRow(Base):
    """An emergency department visit (an EMER Encounter)."""

    __tablename__ = "ed_visits"

    encounter_id: Mapped[str] = mapped_column(ID, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ID)
    hospital_id: Mapped[str | None] = mapped_column(REF)
    ward_id: Mapped[str | None] = mapped_column(REF)
    arrived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    departed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    admitted: Mapped[bool] = mapped_column(Boolean)
    disposition: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_ed_visits_patient_id", "patient_id"),
        Index("ix_ed_visits_hospital_arrived", "hospital_id", "arrived_at"),
        Index("ix_ed_visits_hospital_departed", "hospital_id", "departed_at"),
    )


class CommunityVisitRow(Base):
    """A community contact (AMB, HH or VR Encounter)."""

    __tablename__ = "community_visits"

    encounter_id: Mapped[str] = mapped_column(ID, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ID)
    class_code: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str | None] = mapped_column(REF)
    start_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_community_visits_patient_id", "patient_id"),)


class ReferralRow(Base):
    """A community referral to a hospital (ServiceRequest)."""

    __tablename__ = "referrals"

    referral_id: Mapped[str] = mapped_column(ID, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ID)
    requester: Mapped[str | None] = mapped_column(REF)
    performer: Mapped[str | None] = mapped_column(REF)
    authored_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(32))

    __table_args__ = (Index("ix_referrals_patient_id", "patient_id"),)


class AppointmentRow(Base):
    """A booked appointment (FHIR Appointment): a scheduled admission or a consultation.

    `hospital_id` is the performer of the referral it is based on; `service_code` its
    `serviceType`; `location_id` its Location participant. Each is None when the Appointment
    does not say."""

    __tablename__ = "appointments"

    appointment_id: Mapped[str] = mapped_column(ID, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ID)
    status: Mapped[str] = mapped_column(String(32))
    start_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    booked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    based_on: Mapped[str | None] = mapped_column(REF)
    hospital_id: Mapped[str | None] = mapped_column(REF)
    service_code: Mapped[str | None] = mapped_column(String(64))
    location_id: Mapped[str | None] = mapped_column(REF)

    __table_args__ = (
        Index("ix_appointments_patient_id", "patient_id"),
        Index("ix_appointments_start_at", "start_at"),
    )


class AlertRow(Base):
    """An alert, keyed by a deterministic id so that a replay rewrites the same row.

    `acknowledged_by/at` belong to people (the dashboard); the sink never overwrites them.
    """

    __tablename__ = "alerts"

    alert_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    alert_type: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(ID)
    unit_id: Mapped[str | None] = mapped_column(REF)
    status: Mapped[str] = mapped_column(String(16))
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_alerts_patient_id", "patient_id"),
        Index("ix_alerts_status_type", "status", "alert_type"),
    )


class AlertAuditRow(Base):
    """Who did what to an alert, when (acknowledge, comment, reopen)."""

    __tablename__ = "alert_audit"

    audit_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(Text)
    # The dashboard role the signed-in actor held; None when written outside the dashboard.
    role: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (Index("ix_alert_audit_alert_id", "alert_id"),)


class LocationRow(Base):
    """A FHIR Location (hospital site, ward or bed) as last recorded."""

    __tablename__ = "locations"

    location_id: Mapped[str] = mapped_column(REF, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(256))
    physical_type: Mapped[str | None] = mapped_column(String(16))
    part_of: Mapped[str | None] = mapped_column(REF)
    status: Mapped[str] = mapped_column(String(32))
    service_code: Mapped[str | None] = mapped_column(String(64))
    service_name: Mapped[str | None] = mapped_column(String(256))
    organization: Mapped[str | None] = mapped_column(REF)
    source_version: Mapped[str] = mapped_column(String(128))


class OrganizationRow(Base):
    """A FHIR Organization as last recorded: the name of a hospital known by its Organization."""

    __tablename__ = "organizations"

    organization_id: Mapped[str] = mapped_column(REF, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(256))
    source_version: Mapped[str] = mapped_column(String(128))


class LocationOccupancyRow(Base):
    """Live occupancy of one unit: patients in it now (open stay periods) and its capacity."""

    __tablename__ = "location_occupancy"

    unit_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    unit_id: Mapped[str] = mapped_column(REF, primary_key=True)
    hospital_id: Mapped[str] = mapped_column(REF)
    name: Mapped[str | None] = mapped_column(String(256))
    occupied: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int | None] = mapped_column(Integer)
    as_of: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_location_occupancy_hospital_id", "hospital_id"),)


class CensusHourlyRow(Base):
    """Counts of one unit (ward, service or hospital) during one hour starting at `hour`."""

    __tablename__ = "census_hourly"

    unit_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    unit_id: Mapped[str] = mapped_column(REF, primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    hospital_id: Mapped[str] = mapped_column(REF)
    occupancy: Mapped[int] = mapped_column(Integer)
    admissions: Mapped[int] = mapped_column(Integer)
    discharges: Mapped[int] = mapped_column(Integer)
    transfers_in: Mapped[int] = mapped_column(Integer)
    transfers_out: Mapped[int] = mapped_column(Integer)
    ed_arrivals: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_census_hourly_hospital_hour", "hospital_id", "hour"),)


class CensusPendingRow(Base):
    """Hours of one hospital's census that a backlog's batches changed and whose recomputation
    they left to a later write (`streams.sink.writer.SqlSink`): from `lo` to `hi`, or none (both
    null) when only the hospital's live occupancy is to be rewritten."""

    __tablename__ = "census_pending"

    hospital_id: Mapped[str] = mapped_column(REF, primary_key=True)
    lo: Mapped[datetime | None] = mapped_column(UTCDateTime)
    hi: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SinkVersionRow(Base):
    """How many times an input that sinks cache (`locations`) was changed by any worker."""

    __tablename__ = "sink_versions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class StreamProgressRow(Base):
    """How far the stream worker holding a raw partition is, as it last reported."""

    __tablename__ = "stream_progress"

    topic: Mapped[str] = mapped_column(REF, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str] = mapped_column(REF)
    # The last offset whose batch is in SQL, and the partition's end as last fetched.
    processed_offset: Mapped[int | None] = mapped_column(BigInteger)
    highwater: Mapped[int | None] = mapped_column(BigInteger)
    lag: Mapped[int | None] = mapped_column(BigInteger)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime)
