"""docker-compose.yml, checked by parsing it (no Docker daemon needed): health checks on
/readyz, no default secret (compose refuses to start without them), a Prometheus service
whose configuration is in the repository and scrapes both services, a stop grace period
longer than the services' own bound."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from orderstack.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = {"order-service": 8080, "product-service": 3000}
SECRETS = ("ADMIN_TOKEN", "MYSQL_PASSWORD", "MYSQL_ROOT_PASSWORD", "RABBITMQ_PASSWORD")


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(compose_text)
    return document


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {str(k): str(v) for k, v in env.items()}


def healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


@pytest.mark.parametrize(("name", "port"), APP_SERVICES.items())
def test_service_health_checks_use_readyz(compose: dict[str, Any], name: str, port: int) -> None:
    command = healthcheck_command(compose["services"][name])

    assert f"http://127.0.0.1:{port}/readyz" in command
    assert "/health'" not in command


@pytest.mark.parametrize("name", APP_SERVICES)
def test_services_get_the_admin_token_only_from_the_environment(
    compose: dict[str, Any], name: str
) -> None:
    value = environment(compose["services"][name])["ADMIN_TOKEN"]

    assert re.fullmatch(r"\$\{ADMIN_TOKEN:\?[^}]+\}", value), value


def scalars(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *scalars(v)]]
    if isinstance(node, list):
        return [s for item in node for s in scalars(item)]
    return [str(node)]


def test_no_secret_has_a_default(compose_text: str, compose: dict[str, Any]) -> None:
    for secret in SECRETS:
        uses = re.findall(r"\$\{" + secret + r"(:?[-?+]?)[^}]*\}", compose_text)
        assert uses, f"{secret} is not used"
        assert set(uses) == {":?"}, f"{secret} must be required (${{{secret}:?...}}): {uses}"
    # Nor a password written out: the seed's values live in .env.example only.
    values = "\n".join(scalars(compose))
    for literal in ("orderpass", "guest", "dev-admin-token", "change-me", "rootpass"):
        assert literal not in values, literal


def test_database_and_broker_passwords_come_from_the_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mysql, rabbitmq = environment(services["mysql"]), environment(services["rabbitmq"])
    for name in APP_SERVICES:
        env = environment(services[name])
        assert env["DB_PASSWORD"].startswith("${MYSQL_PASSWORD:?")
        assert "${RABBITMQ_PASSWORD:?" in env["RABBITMQ_URL"]
    assert mysql["MYSQL_PASSWORD"].startswith("${MYSQL_PASSWORD:?")
    assert mysql["MYSQL_ROOT_PASSWORD"].startswith("${MYSQL_ROOT_PASSWORD:?")
    assert rabbitmq["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_PASSWORD:?")
    assert "$$MYSQL_PASSWORD" in healthcheck_command(services["mysql"])


def test_prometheus_scrapes_both_services_with_its_config_in_the_repository(
    compose: dict[str, Any],
) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = [str(v) for v in prometheus["volumes"]]
    config_mount = next(m for m in mounts if m.endswith(":/etc/prometheus/prometheus.yml:ro"))
    config_path = ROOT / config_mount.split(":", 1)[0]
    assert config_path.is_file(), config_path
    assert set(APP_SERVICES) <= set(prometheus["depends_on"])

    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    targets = {
        target: job.get("metrics_path", "/metrics")
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {f"{name}:{port}": "/metrics" for name, port in APP_SERVICES.items()}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_stop_grace_period_outlasts_the_services_stop_bound(
    compose: dict[str, Any], name: str
) -> None:
    grace = compose["services"][name]["stop_grace_period"]

    assert grace.endswith("s") and float(grace[:-1]) > load_settings().shutdown_bound_seconds


def test_env_example_sets_every_variable_compose_requires(compose_text: str) -> None:
    required = set(re.findall(r"\$\{([A-Z_]+):\?", compose_text))
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    given = {
        line.split("=", 1)[0].strip()
        for line in example.splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }

    assert required and required <= given
