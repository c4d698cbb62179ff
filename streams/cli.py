"""`parcours pathways …` and `parcours census …`: read what the stream worker wrote to SQL.

Human-readable by default; `--json` prints one JSON document (stable keys) for scripts.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer

from parcours.timeutil import TimeFormatError, parse_fhir

pathways_app = typer.Typer(
    help="Care pathways (what the stream worker wrote).", no_args_is_help=True
)
census_app = typer.Typer(help="Bed census: occupancy and capacity.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _engine() -> Any:
    from parcours.db import make_engine
    from parcours.runtime import load_settings

    return make_engine(load_settings().db_url)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _t(value: str | None) -> str:
    return value.replace("+00:00", "Z") if value else "—"


@pathways_app.command("show")
def pathways_show(
    patient_id: Annotated[
        str, typer.Argument(help="Patient id (Patient.id), or an identifier value (IPP, INS).")
    ],
    as_json: JsonOption = False,
) -> None:
    """Print a patient's pathway: stays (wards, beds, periods, disposition), ED visits,
    community visits, referrals and open alerts."""
    from streams.read import pathway, patients_with_identifier

    engine = _engine()
    data = pathway(engine, patient_id)
    if data is None:
        matches = patients_with_identifier(engine, patient_id)
        if len(matches) > 1:
            typer.echo(
                f"error: identifier {patient_id!r} belongs to several patients: "
                + ", ".join(matches),
                err=True,
            )
            raise typer.Exit(1)
        if matches:
            patient_id = matches[0]
            data = pathway(engine, patient_id)
    if data is None:
        typer.echo(f"error: no pathway for patient {patient_id!r}", err=True)
        raise typer.Exit(1)
    if as_json:
        _print_json(data)
        return
    echo = typer.echo
    echo(f"Patient {patient_id}  stage: {data['stage']} since {_t(data['stage_since'])}")
    echo(f"\nStays ({len(data['stays'])})")
    for s in data["stays"]:
        los = f"{s['los_hours']:.1f} h" if s["los_hours"] is not None else "open"
        echo(
            f"  {s['stay_id']}  {_t(s['admitted_at'])} → {_t(s['discharged_at'])}  LOS {los}"
            f"  hospital {s['hospital_id'] or '—'}  disposition {s['disposition'] or '—'}"
        )
        for p in s["locations"]:
            place = " / ".join(x for x in (p["ward_id"], p["bed_id"]) if x) or "hospital"
            echo(f"      {place:<30} {_t(p['start_at'])} → {_t(p['end_at'])}")
    echo(f"\nED visits ({len(data['ed_visits'])})")
    for v in data["ed_visits"]:
        admitted = "admitted" if v["admitted"] else "not admitted"
        echo(f"  {v['encounter_id']}  {_t(v['arrived_at'])} → {_t(v['departed_at'])}  {admitted}")
    echo(f"\nCommunity visits ({len(data['community_visits'])})")
    for c in data["community_visits"]:
        echo(f"  {c['encounter_id']}  {c['class_code']}  {_t(c['start_at'])}")
    echo(f"\nReferrals ({len(data['referrals'])})")
    for r in data["referrals"]:
        echo(
            f"  {r['referral_id']}  {_t(r['authored_at'])}  {r['status']}  "
            f"to {r['performer'] or '—'}"
        )
    echo(f"\nOpen alerts ({len(data['open_alerts'])})")
    for a in data["open_alerts"]:
        echo(f"  {a['alert_type']}  since {_t(a['raised_at'])}  {a['message']}")


@pathways_app.command("summary")
def pathways_summary(as_json: JsonOption = False) -> None:
    """Totals: patients, stays, ED visits, community visits, mean and median LOS, open alerts."""
    from streams.read import summary

    data = summary(_engine())
    if as_json:
        _print_json(data)
        return
    for key in ("patients", "stays", "open_stays", "ed_visits", "community_visits"):
        typer.echo(f"{key.replace('_', ' '):<22} {data[key]}")
    typer.echo(f"{'LOS mean (hours)':<22} {data['los_hours_mean']}")
    typer.echo(f"{'LOS median (hours)':<22} {data['los_hours_median']}")
    typer.echo("open alerts")
    for kind, n in data["open_alerts"].items():
        typer.echo(f"  {kind:<20} {n}")
    if not data["open_alerts"]:
        typer.echo("  none")


def parse_at(value: str) -> datetime:
    """An ISO 8601 time; without a zone it is read as UTC."""
    try:
        parsed = parse_fhir(value)
    except TimeFormatError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time") from exc
    if parsed is None:
        raise typer.BadParameter("an ISO 8601 time is needed")
    return parsed


@census_app.command("show")
def census_show(
    at: Annotated[
        str | None, typer.Option("--at", help="ISO 8601 time (UTC if no zone); default now.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print occupancy and capacity per hospital, service and ward."""
    from parcours.db import make_engine
    from parcours.runtime import load_settings
    from streams.read import census

    settings = load_settings()
    when = parse_at(at) if at else None
    data = census(make_engine(settings.db_url), when, settings.census_capacity)
    if as_json:
        _print_json(data)
        return
    typer.echo(f"Census as of {_t(data['as_of'])}")
    typer.echo(f"{'unit':<9} {'id':<44} {'occupied':>8} {'capacity':>8}  name")
    for u in data["units"]:
        indent = {"hospital": "", "service": "  ", "ward": "    "}.get(u["unit_type"], "")
        cap = u["capacity"] if u["capacity"] is not None else "—"
        typer.echo(
            f"{u['unit_type']:<9} {indent + u['unit_id']:<44} {u['occupied']:>8} {cap:>8}  "
            f"{u['name'] or ''}"
        )
    if not data["units"]:
        typer.echo("(no unit yet)")
