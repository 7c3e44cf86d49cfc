"""Settings from the environment: the seed's variables, the URL forms that win over them,
and start-up stopping on a value that cannot be parsed."""

from __future__ import annotations

import pytest

from orderstack.config import DEFAULT_SQLITE_URL, ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the machine running the tests leaks into the settings."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def test_nothing_set_means_the_embedded_defaults() -> None:
    settings = load_settings()

    assert settings.database_url.render_as_string(hide_password=False) == DEFAULT_SQLITE_URL
    assert settings.redis_url is None
    assert settings.RABBITMQ_URL is None
    assert settings.ADMIN_TOKEN is None
    assert (settings.ORDER_PORT, settings.PRODUCT_PORT) == (8080, 3000)


def test_seed_database_variables_build_a_mysql_asyncmy_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "DB_HOST": "mysql",
        "DB_PORT": "3307",
        "DB_USER": "app",
        "DB_PASSWORD": "secret",
        "DB_NAME": "orderdb",
    }.items():
        monkeypatch.setenv(name, value)

    url = load_settings().database_url

    assert url.drivername == "mysql+asyncmy"
    assert (url.host, url.port, url.username, url.password, url.database) == (
        "mysql",
        3307,
        "app",
        "secret",
        "orderdb",
    )


def test_password_with_url_characters_survives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "db")
    monkeypatch.setenv("DB_PASSWORD", "p@ss:w/rd#1?")

    url = load_settings().database_url

    assert (url.host, url.password) == ("db", "p@ss:w/rd#1?")


def test_database_url_wins_over_the_db_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_HOST", "ignored-host")
    monkeypatch.setenv("DATABASE_URL", "mysql://u:p@chosen:3306/shop")

    url = load_settings().database_url

    assert (url.drivername, url.host, url.database) == ("mysql+asyncmy", "chosen", "shop")


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("mariadb://u:p@db/shop", "mysql+asyncmy"),
        ("mysql+pymysql://u:p@db/shop", "mysql+asyncmy"),
        ("postgresql://u:p@db/shop", "postgresql+asyncpg"),
        ("sqlite:///./var/test.db", "sqlite+aiosqlite"),
    ],
)
def test_database_url_gets_the_async_driver_of_its_family(given: str, driver: str) -> None:
    assert load_settings(DATABASE_URL=given).database_url.drivername == driver


def test_redis_host_port_becomes_a_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "redis:6379")

    assert load_settings().redis_url == "redis://redis:6379/0"


def test_redis_url_wins_over_redis_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "redis:6379")
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6380/2")

    assert load_settings().redis_url == "redis://cache.internal:6380/2"


def test_empty_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_HOST", "REDIS_URL", "RABBITMQ_URL"):
        monkeypatch.setenv(name, "")

    settings = load_settings()

    assert settings.database_url.get_backend_name() == "sqlite"
    assert settings.redis_url is None
    assert settings.RABBITMQ_URL is None


def test_several_product_service_urls_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRODUCT_SERVICE_URL", "http://a:3000/, http://b:3000")

    assert load_settings().product_service_urls == ["http://a:3000", "http://b:3000"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_HOST", "redis"),
        ("REDIS_HOST", "redis:port"),
        ("REDIS_HOST", "redis:70000"),
        ("REDIS_URL", "http://redis:6379"),
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "oracle://u:p@db/shop"),
        ("DB_PORT", "three"),
        ("DB_PORT", "0"),
        ("RABBITMQ_URL", "rabbitmq:5672"),
        ("PRODUCT_SERVICE_URL", "product-service:3000"),
        ("MAX_BODY_BYTES", "lots"),
        ("LOG_LEVEL", "LOUD"),
    ],
)
def test_unparseable_value_raises_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError, match=variable):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RABBITMQ_URL", "amqp://guest:guest@localhost:99999/"),
        ("RABBITMQ_URL", "amqp://guest:guest@localhost:0/"),
        ("RABBITMQ_URL", "amqp://guest:guest@/"),
        ("RABBITMQ_URL", "amqp://guest:guest@rabbit-1:5672/,amqp://guest:guest@rabbit-2:x/"),
        ("REDIS_URL", "redis://:abc/0"),
        ("REDIS_URL", "redis:///0"),
        ("REDIS_URL", "redis://cache host:6379/0"),
        ("REDIS_URL", "unix://"),
        ("REDIS_HOST", ":6379"),
        ("REDIS_HOST", "cache host:6379"),
        ("PRODUCT_SERVICE_URL", "http://host:notaport"),
        ("PRODUCT_SERVICE_URL", "http://:3000"),
        ("PRODUCT_SERVICE_URL", "http://a:3000,http://b:65536"),
        ("DATABASE_URL", "mysql://root@/orderdb"),
        ("DATABASE_URL", "mysql://root@db:99999/orderdb"),
        ("DATABASE_URL", "mysql://root@db:port/orderdb"),
        ("DATABASE_URL", "postgresql://postgres@:5432/orderdb"),
        ("DATABASE_URL", "mysql://root@db%20host/orderdb"),
    ],
)
def test_a_url_with_a_bad_host_or_port_raises_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Caught at start, not later: a traceback when the adapter is built, a broker retried
    for ever, or a 500 on every order for a product service that can never be reached."""
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError, match=variable):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RABBITMQ_URL", "amqps://u:p%40ss@rabbit-1.example.com/vhost,amqp://u:p@10.0.0.2:5672/"),
        ("REDIS_URL", "redis://:secret@cache.internal:6380/2"),
        ("REDIS_URL", "rediss://cache"),
        ("REDIS_URL", "unix:///run/redis.sock"),
        ("PRODUCT_SERVICE_URL", "http://[::1]:3000,https://product_service"),
        ("DATABASE_URL", "mysql://u:p%2Fw@[::1]:3306/shop"),
        ("DATABASE_URL", "postgresql://postgres@/shop?host=/var/run/postgresql"),
        ("DATABASE_URL", "sqlite:///./var/test.db"),
    ],
)
def test_urls_with_a_host_and_a_port_are_accepted(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    load_settings()


def test_a_bad_port_in_a_url_does_not_echo_its_password() -> None:
    # An unencoded "/" in the password ends the authority early: what follows ":" is read
    # as the port. The message must not repeat it.
    with pytest.raises(ConfigError) as caught:
        load_settings(RABBITMQ_URL="amqp://guest:hunter2/x@rabbit:5672/")

    assert "RABBITMQ_URL" in str(caught.value) and "hunter2" not in str(caught.value)


def test_config_error_names_every_bad_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(REDIS_HOST="nope", DB_PORT="x")

    assert "REDIS_HOST" in str(caught.value)
    assert "DB_PORT" in str(caught.value)


def test_config_error_does_not_echo_the_database_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(DATABASE_URL="oracle://user:hunter2@db/shop")

    assert "hunter2" not in str(caught.value)


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDER_PORT", "8081")

    assert load_settings(ORDER_PORT=9000).ORDER_PORT == 9000


def test_an_empty_value_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # `DB_PORT=` in a compose file or a shell means "not given": the default applies.
    for name in ("DB_PORT", "METRICS_ENABLED", "QUEUE_TYPE", "HOST", "PRODUCT_SERVICE_URL"):
        monkeypatch.setenv(name, "")
    settings = load_settings()
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    for name in ("DB_PORT", "METRICS_ENABLED", "QUEUE_TYPE", "HOST", "PRODUCT_SERVICE_URL"):
        assert getattr(settings, name) == defaults[name], name
