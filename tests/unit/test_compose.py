"""docker-compose.yml, checked by parsing it (no Docker daemon needed): health checks on
/readyz, no default secret (compose refuses to start without them), a Prometheus service
whose configuration is in the repository and scrapes both services, a stop grace period
longer than the services' own bound; one broker user per service, allowed what
deploy/rabbitmq/definitions.json gives it (made from the code: harness/broker_definitions.py),
and a Redis that asks for a password the services' REDIS_URL carries. (The definitions on a
real RabbitMQ: tests/integration/test_broker_definitions.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import broker_definitions
from orderstack.config import Settings, load_settings
from orderstack.events import Service
from orderstack.messaging.trust import PublisherTrust

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = {"order-service": 8080, "product-service": 3000}
SECRETS = (
    "AUTH_SIGNING_KEY",
    "ADMIN_TOKEN",
    "MYSQL_PASSWORD",
    "MYSQL_ROOT_PASSWORD",
    "RABBITMQ_ADMIN_PASSWORD",
    "ORDER_SERVICE_BROKER_PASSWORD",
    "PRODUCT_SERVICE_BROKER_PASSWORD",
    "REDIS_PASSWORD",
)
# Each app service and the broker user it logs in as.
BROKER_USERS = {"order-service": Service.ORDERS, "product-service": Service.PRODUCTS}
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"


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


@pytest.mark.parametrize("name", APP_SERVICES)
def test_services_run_with_authentication_on(compose: dict[str, Any], name: str) -> None:
    """Both services check bearer tokens in compose: a signing key only from the
    environment, and AUTH_MODE never turned off; the key .env.example publishes loads as a
    setting (32 bytes or more)."""
    env = environment(compose["services"][name])

    assert re.fullmatch(r"\$\{AUTH_SIGNING_KEY:\?[^}]+\}", env["AUTH_SIGNING_KEY"])
    assert env.get("AUTH_MODE", "jwt") == "jwt"
    settings = load_settings(AUTH_SIGNING_KEY=interpolated(env["AUTH_SIGNING_KEY"]))
    assert settings.auth_mode == "jwt" and settings.signing_keys


def example_values() -> dict[str, str]:
    """The variables .env.example sets."""
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def interpolated(value: str) -> str:
    """``value`` as compose fills it in from .env.example (``${NAME...}``; ``$$`` is ``$``)."""
    given = example_values()

    def fill(match: re.Match[str]) -> str:  # ${NAME:?message} required, ${NAME:-default}
        name, default = match.group(1), match.group(2)
        return given[name] if default is None else given.get(name, default)

    filled = re.sub(r"(?<!\$)\$\{([A-Z_]+)(?::-([^}]*)|:\?[^}]*)?\}", fill, value)
    return filled.replace("$$", "$")


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
        own = "ORDER" if name == "order-service" else "PRODUCT"
        assert f"${{{own}_SERVICE_BROKER_PASSWORD:?" in env["RABBITMQ_URL"]
    assert mysql["MYSQL_PASSWORD"].startswith("${MYSQL_PASSWORD:?")
    assert mysql["MYSQL_ROOT_PASSWORD"].startswith("${MYSQL_ROOT_PASSWORD:?")
    for secret in ("RABBITMQ_ADMIN_PASSWORD", "ORDER_SERVICE_BROKER_PASSWORD"):
        assert rabbitmq[secret].startswith(f"${{{secret}:?")
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


# -- trust between the services ----------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_service_logs_in_to_the_broker_as_its_own_user(
    compose: dict[str, Any], name: str
) -> None:
    """As the service reads its settings once compose filled in .env.example's values."""
    env = {k: interpolated(v) for k, v in environment(compose["services"][name]).items()}
    settings = load_settings(**{k: v for k, v in env.items() if k in Settings.model_fields})
    service = BROKER_USERS[name]

    assert settings.broker_user == broker_definitions.SERVICE_USERS[service]
    # Both know who publishes what (the consumer believes each event from its publisher's).
    trust = PublisherTrust.from_settings(settings)
    assert dict(trust.users) == broker_definitions.SERVICE_USERS
    assert trust.require_user_id  # BROKER_USER_ID_CHECK's default
    assert trust.services_of(settings.broker_user) == {service}  # declares its own queues


def test_the_broker_loads_the_definitions_with_the_environments_passwords(
    compose: dict[str, Any],
) -> None:
    rabbitmq = compose["services"]["rabbitmq"]
    env = environment(rabbitmq)
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in rabbitmq["volumes"]}

    assert rabbitmq["entrypoint"] == ["sh", "/etc/orderstack/entrypoint.sh"]
    assert mounts["/etc/orderstack"] == "./deploy/rabbitmq"
    conf = ROOT / mounts["/etc/rabbitmq/conf.d/90-orderstack.conf"]
    script = (ROOT / "deploy" / "rabbitmq" / "entrypoint.sh").read_text(encoding="utf-8")
    rendered = re.search(r"^rendered=(\S+)$", script, re.M)
    assert rendered is not None
    assert f"load_definitions = {rendered.group(1)}" in conf.read_text(encoding="utf-8")
    assert "/etc/orderstack/definitions.json" in script
    for name in broker_definitions.PLACEHOLDERS:  # each filled in, from the environment
        assert name in script.split("for name in", 1)[1].split("; do", 1)[0], name
        assert env[name] == f"${{{name}:?set {name} (see .env.example)}}"
    assert not any(k.startswith("RABBITMQ_DEFAULT_") for k in env)  # no default user


def test_the_definitions_are_made_from_the_code() -> None:
    """Each service's permissions (messaging/trust.py) and the topology the services
    declare (messaging/topology.py): regenerate with `python -m harness.broker_definitions
    > deploy/rabbitmq/definitions.json`."""
    assert DEFINITIONS.read_text(encoding="utf-8") == broker_definitions.render()


def test_the_definitions_hold_no_password_and_no_guest() -> None:
    document = json.loads(DEFINITIONS.read_text(encoding="utf-8"))

    placeholders = {f"__{name}__" for name in broker_definitions.PLACEHOLDERS}
    for user in document["users"]:
        assert user["password"] in placeholders, user["name"]
    assert "guest" not in DEFINITIONS.read_text(encoding="utf-8")


def test_redis_asks_for_a_password_the_services_urls_carry(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    env = environment(redis)

    assert "--requirepass" in " ".join(redis["command"])
    assert '"$$REDIS_PASSWORD"' in " ".join(redis["command"])  # the container's, not compose's
    assert env["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert env["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")  # the health check's login
    for name in APP_SERVICES:
        app = environment(compose["services"][name])
        assert app["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert "REDIS_HOST" not in app  # it has no password: the URL wins, but say one thing
        url = load_settings(REDIS_URL=interpolated(app["REDIS_URL"])).redis_url
        assert url == f"redis://:{example_values()['REDIS_PASSWORD']}@redis:6379/0"
