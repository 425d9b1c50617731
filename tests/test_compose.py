"""docker-compose.yml, checked without a Docker engine (none runs on the test machines):
the file parses, its Kafka is the release the tests run, every variable it sets for the
service is a setting the service reads, and every command it runs is a CLI command."""

from __future__ import annotations

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
