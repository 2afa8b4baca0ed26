"""docker-compose.yml: it parses (Debian's docker-compose when installed, as CI installs it) and
describes a whole city: every service built or pulled, health-checked, its dependencies real,
no secret written into the file, the files it mounts present in the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from citywatch.streams.faust_cli import standalone

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
REQUIRED_ENV = ("CITYWATCH_MQTT__PASSWORD", "INFLUX_ADMIN_PASSWORD", "CITYWATCH_INFLUX__TOKEN",
                "CITYWATCH_WEBHOOKS__SECRET", "CITYWATCH_API__TOKEN", "GRAFANA_ADMIN_PASSWORD",
                "CITYWATCH_KAFKA__PASSWORD")
SECRET_KEY = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)
REFERENCE = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # merges the x- anchors (<<)
    return data


def test_docker_compose_accepts_the_file() -> None:
    tool = shutil.which("docker-compose")
    env = {"PATH": os.environ.get("PATH", ""), **{name: "placeholder" for name in REQUIRED_ENV}}
    if tool is None:  # CI installs Debian's docker-compose; elsewhere the structural tests below stand
        yaml.safe_load(COMPOSE.read_text())
        return
    ok = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True,
                        timeout=60, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    # without the secrets it refuses to run rather than starting with empty ones
    missing = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], env={"PATH": env["PATH"]},
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert missing.returncode != 0 and "set " in missing.stderr


def test_a_city_runs_on_kafka_with_health_checks(compose: dict[str, Any]) -> None:
    services: dict[str, Any] = compose["services"]
    assert {"mosquitto", "redpanda", "influxdb", "grafana", "citywatch-bridge", "citywatch-worker",
            "citywatch-sink"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        check = service.get("healthcheck", {}).get("test")
        assert check and check[0] in ("CMD", "CMD-SHELL"), f"{name}: no health check"
        depends = service.get("depends_on", {})
        for target in depends:
            assert target in services, f"{name} depends on unknown {target}"
            if isinstance(depends, dict):
                assert depends[target].get("condition") == "service_healthy", (name, target)
    assert services["influxdb"]["image"].startswith("influxdb:2.")
    assert "rpk cluster health" in " ".join(services["redpanda"]["healthcheck"]["test"])
    worker = services["citywatch-worker"]
    assert worker["command"][:3] == ["worker", "--role", "process"]
    assert "container_name" not in worker and "ports" not in worker  # `--scale citywatch-worker=N` works
    assert worker["deploy"]["replicas"] >= 2
    assert services["citywatch-sink"]["command"][:3] == ["worker", "--role", "sink"]
    assert services["citywatch-bridge"]["command"] == ["bridge"]
    for name in ("citywatch-bridge", "citywatch-worker", "citywatch-sink"):
        env = services[name]["environment"]
        assert env["CITYWATCH_KAFKA__BOOTSTRAP"] == "redpanda:9092"
        assert "citywatch-data:/data" in services[name]["volumes"]  # the shared device registry


def test_the_commands_it_runs_exist() -> None:
    assert {"bridge", "worker", "health"} <= set(standalone.commands)
    worker = standalone.commands["worker"]
    role = next(p for p in worker.params if p.name == "role")
    assert set(role.type.choices) == {"all", "process", "sink"}  # type: ignore[attr-defined]


def test_no_secret_is_written_into_the_file(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        for key, value in items:
            if SECRET_KEY.search(key):
                assert isinstance(value, str) and REFERENCE.match(value), f"{name}: {key}={value!r}"
    for required in REQUIRED_ENV:
        assert f"${{{required}:?" in COMPOSE.read_text(), required


def test_mounted_configuration_is_in_the_repository(compose: dict[str, Any]) -> None:
    mosquitto_conf = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
    text = mosquitto_conf.read_text()
    assert "allow_anonymous false" in text
    assert "password_file /mosquitto/config/passwd" in text and "acl_file /mosquitto/config/acl" in text
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasources = list((provisioning / "datasources").glob("*.yaml"))
    assert datasources and any("influxdb" in p.read_text() for p in datasources)
    assert list((provisioning / "dashboards").glob("*.yaml"))
