"""Settings from a ``.env`` file in the working directory; the environment wins over it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from orderstack.config import ENV_FILE, ConfigError, Settings, load_settings
from orderstack.settings_doc import COMPOSE_VARIABLES


@pytest.fixture(autouse=True)
def clean_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory, and nothing from the machine's environment."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_env(directory: Path, text: str) -> None:
    (directory / ENV_FILE).write_text(text, encoding="utf-8")


def test_settings_are_read_from_the_env_file(clean_directory: Path) -> None:
    write_env(
        clean_directory,
        "# local development\n"
        "ADMIN_TOKEN=from-the-file\n"
        "ORDER_PORT=8181\n"
        'LOG_LEVEL="DEBUG"\n'
        "REDIS_HOST=cache:6380\n",
    )

    settings = load_settings()

    assert settings.ADMIN_TOKEN is not None
    assert settings.ADMIN_TOKEN.get_secret_value() == "from-the-file"  # noqa: S105 - a test value
    assert settings.ORDER_PORT == 8181
    assert settings.LOG_LEVEL == "DEBUG"
    assert settings.redis_url == "redis://cache:6380/0"


def test_the_environment_wins_over_the_env_file(
    clean_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_env(clean_directory, "ADMIN_TOKEN=from-the-file\nORDER_PORT=8181\n")
    monkeypatch.setenv("ADMIN_TOKEN", "from-the-environment")

    settings = load_settings()

    assert settings.ADMIN_TOKEN is not None
    assert settings.ADMIN_TOKEN.get_secret_value() == "from-the-environment"  # noqa: S105
    assert settings.ORDER_PORT == 8181  # not in the environment: the file's


def test_lines_the_settings_do_not_know_are_ignored(clean_directory: Path) -> None:
    # The compose file's own variables share the file (see .env.example).
    write_env(clean_directory, "MYSQL_ROOT_PASSWORD=x\nRABBITMQ_PASSWORD=y\nPRODUCT_PORT=3001\n")

    assert load_settings().PRODUCT_PORT == 3001


def test_no_env_file_means_the_defaults() -> None:
    settings = load_settings()

    assert settings.ADMIN_TOKEN is None
    assert settings.ORDER_PORT == 8080


def test_a_bad_value_in_the_env_file_is_a_config_error(clean_directory: Path) -> None:
    write_env(clean_directory, "ORDER_PORT=not-a-port\n")

    with pytest.raises(ConfigError, match="ORDER_PORT"):
        load_settings()


EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
# KEY=value, set or commented out (`# LOG_LEVEL=INFO`: an example of a setting to give).
_ASSIGNMENT = re.compile(r"^(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def _example() -> tuple[dict[str, str], dict[str, str]]:
    """.env.example's assignments: (set, commented out), name -> value."""
    given: dict[str, str] = {}
    suggested: dict[str, str] = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if match := _ASSIGNMENT.match(line.strip()):
            target = suggested if match["comment"] else given
            target[match["name"]] = match["value"].strip()
    return given, suggested


def test_env_example_holds_only_settings_or_documented_compose_variables() -> None:
    given, suggested = _example()
    known = set(Settings.model_fields) | set(COMPOSE_VARIABLES)
    unknown = sorted((set(given) | set(suggested)) - known)
    assert not unknown, (
        f".env.example names {unknown}: neither a setting (config.py) nor a compose variable "
        "documented in settings_doc.COMPOSE_VARIABLES"
    )
    # The variables docker-compose.yml requires, and no blank value (a blank is "unset").
    required = {
        "ADMIN_TOKEN",
        "MYSQL_PASSWORD",
        "MYSQL_ROOT_PASSWORD",
        "RABBITMQ_ADMIN_USER",
        "RABBITMQ_ADMIN_PASSWORD",
        "ORDER_SERVICE_BROKER_PASSWORD",
        "PRODUCT_SERVICE_BROKER_PASSWORD",
        "REDIS_PASSWORD",
    }
    assert required <= set(given)
    assert all(given.values()), given


def test_env_example_parses_as_settings(clean_directory: Path) -> None:
    """`cp .env.example .env` gives settings that load, and so does each commented-out
    example line once uncommented."""
    given, suggested = _example()
    write_env(clean_directory, EXAMPLE.read_text(encoding="utf-8"))
    settings = load_settings()
    for name, value in given.items():
        if name in Settings.model_fields:
            assert _plain(getattr(settings, name)) == value, name

    uncommented = "\n".join(f"{name}={value}" for name, value in {**given, **suggested}.items())
    write_env(clean_directory, uncommented + "\n")
    settings = load_settings()
    for name, value in suggested.items():
        assert _plain(getattr(settings, name)) == value, name


def _plain(value: object) -> str:
    """A setting as written in the file (a secret's own text, not its mask)."""
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)
