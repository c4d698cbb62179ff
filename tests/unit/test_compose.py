"""docker-compose.yml parses, and every Parcours service runs a real `parcours` subcommand."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from parcours.cli import app

ROOT = Path(__file__).resolve().parents[2]


def parcours_services() -> dict[str, list[str]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {
        name: svc["command"]
        for name, svc in compose["services"].items()
        if svc.get("image") == "parcours:latest"
    }


def test_compose_has_the_infrastructure_and_parcours_services() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka")
    assert compose["services"]["postgres"]["image"].startswith("postgres:16")
    assert {"migrate", "streams", "gateway", "dashboard", "forecaster", "simulator"} <= set(
        parcours_services()
    )


def test_every_compose_command_is_a_real_subcommand() -> None:
    runner = CliRunner()
    for name, command in parcours_services().items():
        first_option = next((i for i, w in enumerate(command) if w.startswith("-")), len(command))
        path = command[:first_option]
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, f"service {name}: `parcours {' '.join(path)}` {result.output}"
        for option in (w for w in command if w.startswith("--")):
            assert option in result.output, f"service {name}: {option} is not an option of {path}"


def test_an_unknown_subcommand_is_refused() -> None:
    result = CliRunner().invoke(app, ["no-such-command", "--help"])
    assert result.exit_code != 0
