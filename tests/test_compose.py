"""docker-compose.yml, checked without a Docker engine (none runs on the test machines):
the file parses, its Kafka is the release the tests run, every variable it sets for the
service is a setting the service reads, every command it runs is a CLI command, and its
Prometheus and Grafana mount the shipped rules and dashboard from files that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from stream_infer.cli import app
from stream_infer.config import ServiceSettings
from stream_infer.config._ensemble import ENV_KEYS
from stream_infer.kafka import KAFKA_VERSION
from tests.conftest import REPO
from tests.ops._prometheus import DASHBOARD, PROMETHEUS_CONFIG, RULES

COMPOSE = REPO / "docker-compose.yml"


def settings_env_names(cls: type[BaseSettings] = ServiceSettings) -> set[str]:
    """Every environment variable the service's settings read (nested settings too)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseSettings):
            names |= settings_env_names(ann)
        elif isinstance(field.validation_alias, AliasChoices):
            names |= {
                c for c in field.validation_alias.choices if isinstance(c, str) and c.isupper()
            }
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def known_env() -> set[str]:
    return settings_env_names() | set(ENV_KEYS.values())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and "services" in doc
    return doc


def _app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("image") == "stream-infer:dev"}


def test_kafka_is_the_release_the_tests_run(compose: dict[str, Any]) -> None:
    images = {s["image"] for s in compose["services"].values() if "kafka" in s.get("image", "")}
    assert images == {f"apache/kafka:{KAFKA_VERSION}"}


def test_every_variable_set_for_the_service_is_a_setting(compose: dict[str, Any]) -> None:
    apps = _app_services(compose)
    assert {"service", "producer", "migrate"} <= set(apps)
    known = known_env()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DB_HOST", "ML_MAMBA_MODEL_PATH", "METRICS_PORT"} <= known
    for name, svc in apps.items():
        unknown = set(svc.get("environment", {})) - known
        assert not unknown, f"{name} sets variables the service does not read: {unknown}"


def test_every_command_is_a_cli_command(compose: dict[str, Any]) -> None:
    for name, svc in _app_services(compose).items():
        cmd = svc["command"]
        words = [w for w in cmd if not w.startswith("-") and not w.startswith("/")]
        sub = words[:2] if words[0] == "db" else words[:1]
        res = CliRunner().invoke(app, [*sub, "--help"])
        assert res.exit_code == 0, (name, sub, res.output)
        # every option it passes is one the command documents
        for opt in (w.split("=")[0] for w in cmd if w.startswith("--")):
            assert opt in res.output, (name, opt)


# -- monitoring (ops/, docs/operations.md) ------------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of a service's bind mounts (host paths must exist)."""
    out = {}
    for v in service.get("volumes", []):
        host, container = v.split(":")[:2]
        assert host.startswith("./"), v
        path = (REPO / host).resolve()
        assert path.exists(), f"{v}: {path} does not exist"
        out[container] = path
    return out


def _in_container(mounts: dict[str, Path], container_path: str) -> Path:
    """The host file a container path resolves to through the bind mounts."""
    for target, host in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return host / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted from the repository")


def test_its_prometheus_and_grafana_mount_the_shipped_rules_and_dashboard(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    # Prometheus: its config and the rules it names come from ops/prometheus
    prom = services["prometheus"]
    prom_mounts = _mounts(prom)
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_file = _in_container(prom_mounts, config_arg.split("=", 1)[1])
    assert config_file.is_file() and config_file.resolve() == PROMETHEUS_CONFIG.resolve()
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    for rule_file in config["rule_files"]:
        assert (config_file.parent / rule_file).resolve() == RULES.resolve()
    # it scrapes the service on its metrics port
    scrape = config["scrape_configs"][0]
    sd = scrape["dns_sd_configs"][0]
    assert sd["names"] == ["service"] and "service" in services
    assert str(sd["port"]) == str(services["service"]["environment"]["METRICS_PORT"])
    # Grafana: the data source points at that Prometheus; the dashboard is where the
    # provider reads dashboards from
    graf = services["grafana"]
    graf_mounts = _mounts(graf)
    prov = _in_container(graf_mounts, "/etc/grafana/provisioning")
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "9090:9090" in prom["ports"]
    providers = yaml.safe_load(
        (prov / "dashboards" / "stream_infer.yml").read_text(encoding="utf-8")
    )["providers"]
    dash_dir = _in_container(graf_mounts, providers[0]["options"]["path"])
    assert (dash_dir / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _in_container(graf_mounts, home).resolve() == DASHBOARD.resolve()
    # the image build copies what it installs with
    dockerfile = compose["x-app"]["build"]["dockerfile_inline"]
    assert "-c constraints.txt" in dockerfile
    for line in dockerfile.splitlines():
        if line.strip().startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), line
