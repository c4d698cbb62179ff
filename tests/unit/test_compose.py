"""docker-compose.yml parses, and every Parcours service runs a real `parcours` subcommand."""

from __future__ import annotations

import re
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


def test_published_ports_bind_to_loopback_unless_told() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    published = [
        (name, port) for name, svc in compose["services"].items() for port in svc.get("ports", [])
    ]
    assert {name for name, _ in published} == {"gateway", "dashboard"}
    for name, port in published:
        assert str(port).startswith("${PARCOURS_BIND:-127.0.0.1}:"), f"{name} publishes {port}"


def test_no_password_has_a_default() -> None:
    for path in (ROOT / "docker-compose.yml", ROOT / "deploy" / "compose.replicated.yml"):
        text = path.read_text()
        references = re.findall(r"\$\{(POSTGRES_PASSWORD|KAFKA_CLUSTER_ID)([^}]*)\}", text)
        for name, rest in references:
            # `:?` makes compose refuse to start without the variable; `:-` would default it.
            assert rest.startswith(":?"), f"{path.name}: ${{{name}{rest}}} has a default"
    assert "POSTGRES_PASSWORD" in (ROOT / "docker-compose.yml").read_text()


def test_the_replicated_override_runs_three_brokers_and_replicates_topics() -> None:
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    over = yaml.safe_load((ROOT / "deploy" / "compose.replicated.yml").read_text())
    brokers = {n: s for n, s in over["services"].items() if n.startswith("kafka")}
    assert set(brokers) == {"kafka", "kafka-2", "kafka-3"}
    node_ids = {s["environment"]["KAFKA_NODE_ID"] for s in brokers.values()}
    assert node_ids == {1, 2, 3}
    for svc in brokers.values():
        env = svc["environment"]
        assert len(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == 3
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
    # Every Parcours service the override touches exists in the base file, and creates its
    # topics with three replicas.
    for name, svc in over["services"].items():
        if name.startswith("kafka"):
            continue
        assert name in base["services"], name
        assert svc["environment"]["PARCOURS_TOPIC_REPLICATION_FACTOR"] == "3"
