"""Folding a batch: decode raw messages, map them to canonical events, fold each patient's events
with the pure rules, derive its SQL rows (`BatchProcessor`), and write them (`SqlSink`).

It runs in the worker (a thread) or in fold processes (`streams.runtime.fold_process`); it knows
nothing of Faust.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from parcours.settings import Settings
from parcours.topics import partition_of_key
from streams.core.events import CanonicalEvent, EncounterRecorded, LocationRecorded, PatientEvent
from streams.core.fhir_map import MappingError, map_resource
from streams.core.pathway import (
    AlertRaised,
    AlertResolved,
    PathwayRules,
    PatientState,
    check_timers,
    to_jsonable,
    transition,
)
from streams.core.projection import patient_rows
from streams.sink.writer import SinkBatch, SinkResult

log = logging.getLogger(__name__)

RETRY_S = 2.0


def rules_from_settings(settings: Settings) -> PathwayRules:
    """The pathway thresholds from the settings."""
    return PathwayRules(
        ed_boarding=timedelta(hours=settings.alert_ed_boarding_hours),
        referral_contact=timedelta(days=settings.alert_referral_days),
        follow_up=timedelta(days=settings.alert_followup_days),
        readmission=timedelta(days=settings.alert_readmission_days),
        los_p90={k: timedelta(days=v) for k, v in settings.alert_los_p90_days.items()},
        los_p90_default=timedelta(days=settings.alert_los_p90_default_days),
    )


class RowSink(Protocol):
    """Where a folded batch's rows go: `streams.sink.writer.SqlSink` in a worker."""

    def write(self, batch: SinkBatch) -> SinkResult:
        """Write one batch's rows in one transaction."""
        ...


@dataclass(frozen=True)
class RawMessage:
    """One raw-topic message: key, payload and the partition it came from."""

    key: bytes | None
    value: bytes
    partition: int = 0


@dataclass
class BatchOutcome:
    """A folded batch: the SQL rows to write, then the table writes, alerts and dead letters."""

    # patient → (partition, `PatientState.to_json()`)
    states: dict[str, tuple[int, str]] = field(default_factory=dict)
    alerts: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    rejects: list[tuple[bytes | None, bytes, str]] = field(default_factory=list)
    events: int = 0
    rows: int = 0
    # What `BatchProcessor.write` sends to SQL, and the raw messages of each patient, which go
    # to the dead letters if the database refuses the patient's rows.
    sink_batch: SinkBatch = field(default_factory=SinkBatch)
    raw_of: dict[str, list[RawMessage]] = field(default_factory=dict)
    refused: bool = False  # the database refused some patients' rows
    rules_s: float = 0.0  # decoding and folding
    sql_s: float = 0.0  # the SQL transaction


def decode_batch(
    messages: Iterable[tuple[bytes | None, bytes]],
) -> tuple[list[CanonicalEvent], list[tuple[bytes | None, bytes, str]]]:
    """Map raw (key, payload) messages to events; failures come back with their reason."""
    events: list[CanonicalEvent] = []
    rejects: list[tuple[bytes | None, bytes, str]] = []
    for key, payload in messages:
        try:
            resource = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            rejects.append((key, payload, f"not valid JSON: {exc}"))
            continue
        try:
            events.extend(map_resource(resource))
        except (ValueError, MappingError) as exc:
            rejects.append((key, payload, str(exc)))
    return events, rejects


def alert_message(out: AlertRaised | AlertResolved) -> dict[str, Any]:
    """The alerts-topic value of a pathway alert output."""
    raised = isinstance(out, AlertRaised)
    return {
        "alert_id": out.alert_id,
        "alert_type": out.kind,
        "patient_id": out.patient_id,
        "status": "open" if raised else "resolved",
        "at": out.at.isoformat(),
        "subject_id": out.subject_id,
        "details": to_jsonable(out.details) if isinstance(out, AlertRaised) else {},
    }


def census_alert_message(row: Mapping[str, Any]) -> dict[str, Any]:
    """The alerts-topic value of a census alert row."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


@dataclass
class Grouped:
    """A batch's patient events by patient (in offset order), and each patient's partition."""

    events: dict[str, list[PatientEvent]] = field(default_factory=dict)
    partition_of: dict[str, int] = field(default_factory=dict)


class BatchProcessor:
    """The body of the batch handler, without Faust: `fold` decodes a batch and runs the rules
    (in a thread, or in fold processes: `streams.runtime.fold_process`), `write` writes it to SQL (in a
    thread); `FoldWritePipeline` runs them."""

    CACHE_LIMIT = 200_000

    def __init__(self, sink: RowSink, rules: PathwayRules) -> None:
        self.sink = sink
        self.rules = rules
        # patient → (the table value, its decoded state). Decoding a state costs more than the
        # transitions of a batch, so a value this worker wrote itself is not decoded again.
        self._decoded: dict[str, tuple[str, PatientState]] = {}

    def _state(self, pid: str, stored: str | None) -> PatientState | None:
        if not stored:
            return None
        cached = self._decoded.get(pid)
        # Equal, not only the same object: the fold process receives copies of the values.
        if cached is not None and cached[0] == stored:
            return cached[1]
        if isinstance(stored, Mapping):
            # A changelog written by an earlier version of the worker holds the state as an object.
            return PatientState.from_dict(stored)
        state = PatientState.from_json(stored)
        # Kept: the timer reads every state each time, and the rules never change a state.
        self._remember(pid, stored, state)
        return state

    def _remember(self, pid: str, value: str, state: PatientState) -> None:
        if len(self._decoded) >= self.CACHE_LIMIT:
            self._decoded.clear()
        self._decoded[pid] = (value, state)

    def process(
        self,
        messages: list[RawMessage],
        get_state: Callable[[str], str | None],
    ) -> BatchOutcome:
        """Fold a batch into the patients' states and write it to SQL in one transaction."""
        outcome = self.fold(messages, get_state)
        self.write(outcome)
        return outcome

    def fold(
        self,
        messages: list[RawMessage],
        get_state: Callable[[str], str | None],
    ) -> BatchOutcome:
        """Decode a batch, fold it into the patients' states and derive their SQL rows."""
        started = time.perf_counter()
        outcome, grouped = self.group(messages)
        stored = {pid: get_state(pid) for pid in grouped.events}
        self.fold_grouped(outcome, grouped, stored)
        outcome.rules_s = time.perf_counter() - started
        return outcome

    def group(self, messages: list[RawMessage]) -> tuple[BatchOutcome, Grouped]:
        """Decode a batch and group its patient events by patient, in offset order."""
        outcome = BatchOutcome()
        grouped = Grouped()
        raw_of = outcome.raw_of
        batch = outcome.sink_batch
        for msg in messages:
            events, rejects = decode_batch([(msg.key, msg.value)])
            outcome.rejects.extend(rejects)
            outcome.events += len(events)
            for ev in events:
                if isinstance(ev, PatientEvent):
                    grouped.events.setdefault(ev.patient_id, []).append(ev)
                    grouped.partition_of.setdefault(ev.patient_id, msg.partition)
                    raw_of.setdefault(ev.patient_id, [])
                    if not raw_of[ev.patient_id] or raw_of[ev.patient_id][-1] is not msg:
                        raw_of[ev.patient_id].append(msg)
                elif isinstance(ev, LocationRecorded):
                    batch.locations.append(ev)
                elif isinstance(ev, EncounterRecorded):
                    batch.encounters.append(ev)
        return outcome, grouped

    def fold_grouped(
        self, outcome: BatchOutcome, grouped: Grouped, stored: Mapping[str, str | None]
    ) -> None:
        """Fold each patient's events onto its stored state; fills in `outcome`."""
        batch = outcome.sink_batch
        for pid, patient_events in grouped.events.items():
            alert_outs: list[AlertRaised | AlertResolved] = []
            try:
                before = self._state(pid, stored.get(pid))
                state = before
                for pev in patient_events:
                    state, outputs = transition(state, pev, self.rules)
                    alert_outs.extend(
                        o for o in outputs if isinstance(o, AlertRaised | AlertResolved)
                    )
                if state is None or state is before:
                    continue
                rows = patient_rows(state, alert_outs)
            except Exception as exc:
                # A rule that breaks on one patient's messages must not stop everyone's pathway:
                # they go to the dead letters with the reason, the state stays as it was.
                log.exception("pathway rules failed for patient %s", pid)
                reason = f"pathway: {type(exc).__name__}: {exc}"
                raw = outcome.raw_of.get(pid, [])
                outcome.rejects.extend((m.key, m.value, reason) for m in raw)
                continue
            batch.patients.append(rows)
            value = state.to_json()
            outcome.states[pid] = (grouped.partition_of[pid], value)
            self._remember(pid, value, state)
            outcome.alerts.extend((pid.encode(), alert_message(o)) for o in alert_outs)

    def write(self, outcome: BatchOutcome) -> None:
        """Write a folded batch to SQL in one transaction; adds the census alerts it changed."""
        started = time.perf_counter()
        result = self._write(outcome)
        outcome.sql_s = time.perf_counter() - started
        outcome.rows = result.rows
        outcome.alerts.extend(
            (str(a["unit_id"]).encode(), census_alert_message(a)) for a in result.alerts
        )

    def tick(
        self, states: Iterable[tuple[str, str]], now: datetime, partitions: int
    ) -> BatchOutcome:
        """Move every patient's clock to `now` and write the alerts that changed."""
        outcome = BatchOutcome()
        batch = outcome.sink_batch
        for pid, stored in states:
            state = self._state(pid, stored)
            if state is None:
                continue
            new, outputs = check_timers(state, now, self.rules)
            alert_outs = [o for o in outputs if isinstance(o, AlertRaised | AlertResolved)]
            if not alert_outs:
                continue
            rows = patient_rows(new, alert_outs)
            batch.patients.append(rows)
            value = new.to_json()
            outcome.states[pid] = (partition_for(pid, partitions), value)
            self._remember(pid, value, new)
            outcome.alerts.extend((pid.encode(), alert_message(o)) for o in alert_outs)
        if batch.patients:
            self.write(outcome)
        return outcome

    def _write(self, outcome: BatchOutcome) -> SinkResult:
        """One transaction; transient database errors are retried until they pass. Rows the
        database refuses (a value too long…) send their patient's messages to the dead letters
        and the rest of the batch is written."""
        while True:
            try:
                return self.sink.write(outcome.sink_batch)
            except (OperationalError, InterfaceError) as exc:
                log.warning("database unavailable, retrying in %ss: %s", RETRY_S, exc)
                time.sleep(RETRY_S)
            except DBAPIError as exc:
                batch = outcome.sink_batch
                if len(batch.patients) <= 1 and not batch.locations and not batch.encounters:
                    raise
                log.warning("batch refused by the database, writing patient by patient: %s", exc)
                return self._write_one_by_one(outcome)

    def _write_one_by_one(self, outcome: BatchOutcome) -> SinkResult:
        batch, total = outcome.sink_batch, SinkResult()
        parts: list[SinkBatch] = [SinkBatch(locations=batch.locations, encounters=batch.encounters)]
        parts += [SinkBatch(patients=[p]) for p in batch.patients]
        for part in parts:
            try:
                result = self.sink.write(part)
            except DBAPIError as exc:
                reason = f"sql: {str(exc).splitlines()[0]}"
                for p in part.patients:
                    outcome.refused = True
                    outcome.states.pop(p.patient_id, None)
                    key = p.patient_id.encode()
                    outcome.alerts = [a for a in outcome.alerts if a[0] != key]
                    outcome.rejects.extend(
                        (m.key, m.value, reason) for m in outcome.raw_of.get(p.patient_id, [])
                    )
                if not part.patients:
                    log.error("locations/encounters of a batch refused: %s", reason)
                continue
            total.rows += result.rows
            total.alerts.extend(result.alerts)
        return total


def partition_for(patient_id: str, partitions: int) -> int:
    """The partition a producer with the default partitioner sends `patient_id` to."""
    return partition_of_key(patient_id.encode(), partitions)
