"""`parcours ingest …`: run the gateway, push files, manage integrator tokens."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

ingest_app = typer.Typer(help="FHIR R4 ingest gateway.", no_args_is_help=True)
token_app = typer.Typer(help="Integrator bearer tokens.", no_args_is_help=True)
ingest_app.add_typer(token_app, name="token")


@ingest_app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default PARCOURS_INGEST_PORT, 8080).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Uvicorn worker processes.")] = 1,
) -> None:
    """Run the FHIR gateway (HTTP) until Ctrl-C. OpenAPI at /docs, CapabilityStatement at
    /fhir/metadata."""
    import os

    import uvicorn

    from parcours.runtime import load_settings, require_topic_identity

    settings = load_settings()
    if settings.database_url is None:
        # The demo's SQLite file must exist with its tables before the first request.
        from parcours.db import upgrade

        upgrade(settings.db_url)
    require_topic_identity(settings, "gateway", db_timeout_s=settings.ingest_db_timeout_s)
    # Workers re-read the settings from the environment (uvicorn factory); pass overrides down.
    os.environ["PARCOURS_INGEST_HOST"] = host or settings.ingest_host
    os.environ["PARCOURS_INGEST_PORT"] = str(port or settings.ingest_port)
    uvicorn.run(
        "ingest.app:app_from_env",
        factory=True,
        host=host or settings.ingest_host,
        port=port or settings.ingest_port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level.upper() == "DEBUG",
        timeout_keep_alive=max(1, round(settings.ingest_keepalive_timeout_s)),
    )


@ingest_app.command("mllp")
def mllp(
    host: Annotated[str | None, typer.Option(help="Address (default PARCOURS_MLLP_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default PARCOURS_MLLP_PORT, 2575).")
    ] = None,
) -> None:
    """Run the HL7 v2 ADT listener (MLLP, IHE PAM / PAM.fr) until Ctrl-C. Allowed senders:
    PARCOURS_MLLP_SENDERS, e.g. '{"gam-chu21": ["CHU21"]}'; TLS with PARCOURS_MLLP_TLS_CERT and
    PARCOURS_MLLP_TLS_KEY."""
    import asyncio
    import contextlib
    import logging

    from ingest.mllp import serve_forever
    from parcours.runtime import load_settings

    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper())
    if settings.database_url is None:
        from parcours.db import upgrade

        upgrade(settings.db_url)
    if not settings.mllp_senders:
        typer.echo(
            "attention : PARCOURS_MLLP_SENDERS est vide, tout message sera refusé (AR)", err=True
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(settings, host, port))


@ingest_app.command("push")
def push(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Bundle JSON, resource JSON or NDJSON files, or folders of them (a Synthea "
            "output folder: hospital and practitioner information go first)."
        ),
    ],
    url: Annotated[str | None, typer.Option(help="Gateway base URL (PARCOURS_INGEST_URL).")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token (PARCOURS_INGEST_TOKEN).")] = None,
    direct: Annotated[
        bool, typer.Option("--direct", help="Validate here and write to Kafka, no gateway.")
    ] = False,
    source: Annotated[str, typer.Option(help="Source name recorded with --direct.")] = "direct",
) -> None:
    """Send files to the gateway with a progress bar; end with accepted, duplicates and
    rejected by reason. Exit code 1 if anything was rejected."""
    from tqdm import tqdm

    from ingest.bulk import plan_file, push_direct, push_http, push_order
    from parcours.runtime import load_settings

    settings = load_settings()
    missing = [str(f) for f in files if not f.is_file() and not f.is_dir()]
    if missing:
        typer.echo(f"error: no such file: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    requests = [r for f in push_order(files) for r in plan_file(f, settings.ingest_max_body_bytes)]
    split = sorted({r.path.name for r in requests if r.parts})
    if split:
        typer.echo(
            f"note: {len(split)} Bundle(s) over PARCOURS_INGEST_MAX_BODY_BYTES "
            f"({settings.ingest_max_body_bytes} bytes) go in parts, each all-or-nothing on its "
            f"own: {', '.join(split[:5])}{' …' if len(split) > 5 else ''}",
            err=True,
        )
    total = sum(r.count for r in requests)
    bar = tqdm(total=total, unit="res", desc="push", file=sys.stderr)
    try:
        if direct:
            from ingest.metrics import IngestMetrics
            from ingest.publish import Publisher
            from ingest.references import ReferenceResolver
            from ingest.service import IngestService
            from parcours.db import make_engine

            engine = make_engine(settings.db_url)
            publisher = Publisher(settings)
            try:
                metrics = IngestMetrics()
                service = IngestService(
                    engine, publisher, metrics, ownership=settings.ingest_ownership
                )
                resolver = ReferenceResolver(engine, metrics, settings.ingest_defer_unresolved)
                summary = push_direct(
                    requests,
                    service,
                    source,
                    bar.update,
                    resolver,
                    max_resource_bytes=settings.ingest_max_resource_bytes,
                )
            finally:
                publisher.close()
                engine.dispose()
        else:
            secret = token or (
                settings.ingest_token.get_secret_value() if settings.ingest_token else None
            )
            if not secret:
                typer.echo(
                    "error: no token; pass --token or set PARCOURS_INGEST_TOKEN "
                    "(create one with `parcours ingest token create NAME`)",
                    err=True,
                )
                raise typer.Exit(2)
            summary = push_http(requests, url or settings.ingest_url, secret, bar.update)
    finally:
        bar.close()
    for line in summary.lines():
        typer.echo(line)
    if summary.rejected_total:
        raise typer.Exit(1)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Integrator name, e.g. samu-21 or lab-cerballiance.")],
    rotate: Annotated[
        bool, typer.Option(help="Replace the token of an existing integrator.")
    ] = False,
    expires_in: Annotated[
        str | None,
        typer.Option(help="Validity of the token, e.g. 90d, 12h, 30m (default: no expiry)."),
    ] = None,
) -> None:
    """Create an integrator and print its bearer token (shown once; only its hash is stored)."""
    from ingest.auth import create_token, parse_duration
    from ingest.outcome import IngestError

    engine = _admin_engine()
    try:
        validity = parse_duration(expires_in) if expires_in else None
        token = create_token(engine, name, rotate=rotate, expires_in=validity)
    except IngestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(token)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="Integrator whose token stops working now.")],
) -> None:
    """Revoke an integrator's token at once (`token create NAME --rotate` issues a new one)."""
    from ingest.auth import revoke_token

    engine = _admin_engine()
    try:
        found = revoke_token(engine, name)
    finally:
        engine.dispose()
    if not found:
        typer.echo(f"error: no integrator named {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked: {name}")


@ingest_app.command("grant")
def grant(
    name: Annotated[str, typer.Argument(help="Integrator that receives the right to write.")],
    patient: Annotated[str | None, typer.Option(help="A patient id.")] = None,
    resource: Annotated[
        str | None, typer.Option(help="A resource of no patient, as Type/id (Location/ward-a).")
    ] = None,
    system: Annotated[
        str | None,
        typer.Option(help="An identifier system: its owner if nobody owns it yet, else a grant."),
    ] = None,
    from_owner: Annotated[
        str | None,
        typer.Option("--from", help="Everything this integrator owns."),
    ] = None,
) -> None:
    """Let integrator NAME write a patient, a resource of no patient (Location, Organization…),
    an identifier system, or everything another integrator owns. Without a grant, writing what
    another integrator owns gets 403."""
    from ingest.ownership import assign_system
    from ingest.ownership import grant as add_grant

    given = (("patient", patient), ("resource", resource), ("system", system))
    chosen = [(k, v) for k, v in (*given, ("owner", from_owner)) if v]
    if len(chosen) != 1:
        typer.echo("error: give exactly one of --patient, --resource, --system, --from", err=True)
        raise typer.Exit(2)
    kind, value = chosen[0]
    if kind == "resource" and not re.fullmatch(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}", value):
        typer.echo("error: --resource takes Type/id, e.g. Location/ward-a", err=True)
        raise typer.Exit(2)
    engine = _admin_engine()
    try:
        if kind == "system" and assign_system(engine, name, value):
            typer.echo(f"{name} owns identifier system {value}")
            return
        add_grant(engine, name, kind, value)
    finally:
        engine.dispose()
    typer.echo(f"granted: {name} may write {kind} {value}")


def _admin_engine() -> Any:
    """The database of the admin commands, migrated first when it is the demo's SQLite."""
    from parcours.db import make_engine, upgrade
    from parcours.runtime import load_settings

    settings = load_settings()
    if settings.database_url is None:
        upgrade(settings.db_url)
    return make_engine(settings.db_url)
