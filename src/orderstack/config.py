"""The one typed settings object: the only place that reads the environment.

The seed's variable names work as written (``DB_HOST``... ``REDIS_HOST=redis:6379``,
``RABBITMQ_URL``, ``PRODUCT_SERVICE_URL``); the URL forms ``DATABASE_URL`` and
``REDIS_URL`` win when both are set. Unset means the embedded default.

Settings are also read from a ``.env`` file in the working directory, when there is one
(``KEY=value`` lines, as docker compose reads them); a variable set in the environment
wins over the same one in the file. Lines the settings do not know are ignored.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePath
from typing import Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from orderstack.storage.engine import Timeouts

# The async driver used for each database family, whatever the URL asked for.
_ASYNC_DRIVERS = {
    "mysql": "mysql+asyncmy",
    "mariadb": "mysql+asyncmy",
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
}

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./var/orderstack.db"
# Read too, below the environment (see the module docstring); relative to the working directory.
ENV_FILE = ".env"
# The last part of a stop: closing the pools and connections (see shutdown_bound_seconds).
SHUTDOWN_CLOSE_SECONDS = 5.0
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105 - documented local-development default, `orderstack dev` only


class ConfigError(Exception):
    """A setting could not be parsed; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=True,
        extra="ignore",
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        # An empty value means unset (the default applies), as the contract says.
        env_ignore_empty=True,
    )

    DB_HOST: str | None = None
    DB_PORT: int = Field(default=3306, ge=1, le=65535)
    DB_USER: str = "root"
    DB_PASSWORD: str = ""
    DB_NAME: str = "orderdb"
    DATABASE_URL: str | None = None

    REDIS_HOST: str | None = None
    REDIS_URL: str | None = None

    RABBITMQ_URL: str | None = None
    # The type of the work and dead-letter queues: quorum (replicated on a cluster) unless
    # the broker needs classic. Changing it for existing queues: `orderstack migrate-queues`.
    QUEUE_TYPE: Literal["classic", "quorum"] = "quorum"
    # Without RABBITMQ_URL, `orderstack dev` keeps its messages in this SQLite file; unset:
    # beside the SQLite database (``var/orderstack.db`` -> ``var/orderstack.bus.db``), or
    # ``var/orderstack.bus.db`` with a database server. ":memory:" keeps them in memory only.
    LOCAL_BUS_PATH: str | None = None
    PRODUCT_SERVICE_URL: str = "http://127.0.0.1:3000"

    HOST: str = "0.0.0.0"
    PORT: int | None = Field(default=None, ge=1, le=65535)
    ORDER_PORT: int = Field(default=8080, ge=1, le=65535)
    PRODUCT_PORT: int = Field(default=3000, ge=1, le=65535)
    ADMIN_TOKEN: str | None = None

    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    LOG_FORMAT: Literal["json", "console"] = "json"
    CACHE_TTL_SECONDS: int = Field(default=300, ge=1, le=86400)
    # How often the product service puts recently changed rows back into the cache (a cache
    # write lost to a crash or a cache blip is healed within this; see products/cache_repair).
    CACHE_REPAIR_INTERVAL_SECONDS: float = Field(default=5.0, gt=0, le=3600)
    DB_POOL_SIZE: int = Field(default=10, ge=1, le=200)
    # Bounds on every wait for the database server (seconds; 0 for statement / lock wait:
    # the server's own default). READ ends a hang on a frozen host: keep it the largest.
    DB_CONNECT_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0, le=300)
    DB_READ_TIMEOUT_SECONDS: float = Field(default=30.0, gt=0, le=3600)
    DB_STATEMENT_TIMEOUT_SECONDS: float = Field(default=15.0, ge=0, le=3600)
    DB_LOCK_WAIT_TIMEOUT_SECONDS: int = Field(default=5, ge=0, le=3600)
    DB_POOL_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0, le=300)
    # How a batch of new orders learns its ids: "auto" asks the server whether it has
    # INSERT ... RETURNING (MariaDB 10.5+, PostgreSQL, SQLite; MySQL 8 has not); "off"
    # forces the MySQL 8 path (one INSERT per order) anywhere, "on" forces RETURNING.
    DB_INSERT_RETURNING: Literal["auto", "on", "off"] = "auto"
    # Every request's deadline: past it, 503 REQUEST_TIMEOUT (nothing changed) or
    # COMMIT_OUTCOME_UNKNOWN (a write was committing), with Retry-After (web/deadline.py).
    # The database's lock bounds (DB_LOCK_WAIT_TIMEOUT_SECONDS) end most waits before it.
    REQUEST_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=300)
    # -- admission under overload (admission.py) -----------------------------------------
    # The most requests served at once per process; more are answered 503 at once.
    MAX_IN_FLIGHT: int = Field(default=1024, ge=1, le=100_000)
    # The limit adapts below MAX_IN_FLIGHT: it shrinks while even the fastest answers of a
    # tenth of a second take longer than this (or the event loop lags a fifth of it), for
    # a second or more, and grows back once they do not.
    ADMISSION_TARGET_SECONDS: float = Field(default=0.1, gt=0, le=60)
    # New orders are refused (503 OVERLOADED) with a probability that rises while orders
    # settle later than this after their 201 (the settling pipeline is behind); 0: never.
    ORDER_SETTLE_TARGET_SECONDS: float = Field(default=0.5, ge=0, le=600)
    MAX_BODY_BYTES: int = Field(default=65536, ge=1024, le=10 * 1024 * 1024)
    OUTBOX_BATCH_SIZE: int = Field(default=500, ge=1, le=5000)
    # Retention (bounded growth, messaging/retention.py): each service deletes its sent
    # outbox rows and its inbox records older than these, in the background every
    # PRUNE_INTERVAL_SECONDS, PRUNE_BATCH_SIZE rows per statement with PRUNE_PAUSE_SECONDS
    # between statements. Unsent outbox rows are never pruned. The inbox must be kept
    # longer than any redelivery can come (a message held through a broker outage, a dead
    # letter replayed): an event arriving after its record is gone would apply twice.
    OUTBOX_RETENTION_SECONDS: int = Field(default=3600, ge=0, le=365 * 86400)
    INBOX_RETENTION_SECONDS: int = Field(default=7 * 86400, ge=3600, le=365 * 86400)
    PRUNE_INTERVAL_SECONDS: float = Field(default=60.0, ge=1, le=86400)
    PRUNE_BATCH_SIZE: int = Field(default=1000, ge=1, le=10_000)
    PRUNE_PAUSE_SECONDS: float = Field(default=0.05, ge=0, le=10)
    OUTBOX_RELAY_WORKERS: int = Field(default=2, ge=1, le=16)  # relay rounds in flight
    CONSUMER_PREFETCH: int = Field(default=200, ge=1, le=5000)
    CONSUMER_BATCH_SIZE: int = Field(default=100, ge=1, le=5000)
    # How long the relay and the consumers let work gather after a wake-up (seconds).
    BATCH_LINGER_SECONDS: float = Field(default=0.005, ge=0, le=1)
    ORDER_WRITE_BATCH: int = Field(default=200, ge=1, le=5000)  # orders per group commit
    PRODUCT_CLIENT_TIMEOUT_SECONDS: float = Field(default=2.0, gt=0, le=60)
    PRODUCT_CLIENT_RETRIES: int = Field(default=2, ge=0, le=10)
    HEALTH_TIMEOUT_SECONDS: float = Field(default=1.0, gt=0, le=30)
    # /health and /readyz reuse one probe round for this long (a flood costs one round).
    HEALTH_CACHE_SECONDS: float = Field(default=1.0, ge=0, le=60)
    # /metrics on each service (Prometheus text format). Off: no route, no HTTP counting.
    METRICS_ENABLED: bool = True
    # One JSON log line per request answered (method, route, status, duration_ms,
    # request_id: web/request_id.py).
    ACCESS_LOG: bool = False
    # GET /products/{id} from the cache, POST /products and POST /orders answered before
    # FastAPI's routing (web/hot.py; the same answers, less CPU). Off: all are routed.
    HTTP_HOT_PATHS: bool = True
    # Traces (OpenTelemetry, tracing.py): on only when set, to an OTLP/HTTP collector
    # (spans go to <endpoint>/v1/traces), e.g. http://otel-collector:4318.
    OTEL_EXPORTER_OTLP_ENDPOINT: str | None = None
    # -- stopping (SIGTERM / Ctrl-C; README "Stopping") --------------------------------
    # Requests in flight when the stop begins get this long to be answered (new connections
    # are refused at once); those still running then are cancelled.
    SHUTDOWN_GRACE_SECONDS: float = Field(default=5.0, gt=0, le=300)
    # Then the consumer finishes the batch it holds (commit, ack) and the relay publishes
    # once more, within this; what is cut off is redelivered / stays unsent, nothing is lost.
    SHUTDOWN_DRAIN_SECONDS: float = Field(default=5.0, gt=0, le=300)
    # -- order service: pending-order sweeper and product client (docs/orders.md) --------
    # How often the sweeper looks for orders pending too long (seconds).
    ORDER_SWEEP_INTERVAL_SECONDS: float = Field(default=5.0, gt=0, le=3600)
    # An order pending (with no resend) for longer than this gets its order.created again.
    ORDER_PENDING_RESEND_SECONDS: float = Field(default=30.0, gt=0, le=86400)
    # Each resend of an order doubles its wait before the next, up to this (jittered).
    ORDER_PENDING_RESEND_MAX_SECONDS: float = Field(default=600.0, gt=0, le=86400)
    # Orders resent per transaction; a round takes at most 20 such batches.
    ORDER_SWEEP_BATCH: int = Field(default=100, ge=1, le=5000)
    # Time one product lookup may spend waiting between attempts (backoff, Retry-After);
    # a Retry-After that does not fit in what is left fails the lookup at once (503).
    PRODUCT_CLIENT_RETRY_BUDGET_SECONDS: float = Field(default=1.0, ge=0, le=60)

    @field_validator("REDIS_HOST")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, e.g. redis:6379")
        _check_address(f"redis://{value}/0", "expected host:port, e.g. redis:6379")
        return value

    @field_validator("DATABASE_URL")
    @classmethod
    def _parseable_db_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError("not a database URL") from exc
        except ValueError:  # SQLAlchemy's int() of the port
            raise ValueError(f"the port is not a number from 1 to 65535 {_DB_URL_FORM}") from None
        if url.get_backend_name() not in _ASYNC_DRIVERS:
            raise ValueError(f"unsupported database {url.get_backend_name()!r}")
        if url.get_backend_name() != "sqlite":
            socket_given = any(key in url.query for key in ("unix_socket", "host"))
            if not url.host and not socket_given:
                raise ValueError(f"the URL has no host {_DB_URL_FORM}")
            if url.port is not None and not 0 < url.port < 65536:
                raise ValueError(f"the port is not a number from 1 to 65535 {_DB_URL_FORM}")
            if url.host and not _is_host(url.host):
                raise ValueError(f"the host is not a host name or an address {_DB_URL_FORM}")
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _parseable_redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://host:port/db")
        if value.startswith("unix://"):
            if not urlsplit(value).path:
                raise ValueError("expected unix:///path/to/redis.sock")
        else:
            _check_address(value, "expected redis://host:port/db")
        return value

    @field_validator("RABBITMQ_URL")
    @classmethod
    def _parseable_amqp_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls or not all(u.startswith(("amqp://", "amqps://")) for u in urls):
            raise ValueError(
                "expected amqp://user:password@host:5672/vhost "
                "(several may be given, comma-separated: the nodes of a cluster)"
            )
        for url in urls:
            _check_address(url, "expected amqp://user:password@host:5672/vhost")
        return ",".join(urls)

    @field_validator("PRODUCT_SERVICE_URL")
    @classmethod
    def _parseable_http_url(cls, value: str) -> str:
        urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
        if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
            raise ValueError("expected http://host:port (several may be given, comma-separated)")
        for url in urls:
            _check_address(url, "expected http://host:port")
        return ",".join(urls)

    # -- derived values ------------------------------------------------------------

    @property
    def database_url(self) -> URL:
        """The async SQLAlchemy URL: DATABASE_URL, else the DB_* parts, else SQLite."""
        if self.DATABASE_URL:
            url = make_url(self.DATABASE_URL)
        elif self.DB_HOST:
            url = make_url(
                f"mysql://{quote(self.DB_USER, safe='')}:{quote(self.DB_PASSWORD, safe='')}"
                f"@{self.DB_HOST}:{self.DB_PORT}/{self.DB_NAME}"
            )
        else:
            url = make_url(DEFAULT_SQLITE_URL)
        return url.set(drivername=_ASYNC_DRIVERS[url.get_backend_name()])

    @property
    def db_timeouts(self) -> Timeouts:
        return Timeouts(
            connect=self.DB_CONNECT_TIMEOUT_SECONDS,
            read=self.DB_READ_TIMEOUT_SECONDS,
            statement=self.DB_STATEMENT_TIMEOUT_SECONDS or None,
            lock_wait=self.DB_LOCK_WAIT_TIMEOUT_SECONDS or None,
            pool=self.DB_POOL_TIMEOUT_SECONDS,
        )

    @property
    def insert_returning(self) -> bool | None:
        """None: ask the server (see DB_INSERT_RETURNING)."""
        return {"auto": None, "on": True, "off": False}[self.DB_INSERT_RETURNING]

    @property
    def local_bus_path(self) -> str | None:
        """Where the embedded bus keeps its messages; None: in memory (not durable)."""
        if self.LOCAL_BUS_PATH:
            return None if self.LOCAL_BUS_PATH == ":memory:" else self.LOCAL_BUS_PATH
        url = self.database_url
        if url.get_backend_name() != "sqlite":
            return "var/orderstack.bus.db"
        if not url.database or url.database == ":memory:":
            return None
        path = PurePath(url.database)
        return str(path.with_name(f"{path.stem}.bus.db"))

    @property
    def redis_url(self) -> str | None:
        if self.REDIS_URL:
            return self.REDIS_URL
        if self.REDIS_HOST:
            return f"redis://{self.REDIS_HOST}/0"
        return None

    @property
    def product_service_urls(self) -> list[str]:
        return self.PRODUCT_SERVICE_URL.split(",")

    @property
    def shutdown_bound_seconds(self) -> float:
        """How long after SIGTERM the process has exited at the latest: the grace for
        requests, the messaging drain, and SHUTDOWN_CLOSE_SECONDS to close the pools."""
        return self.SHUTDOWN_GRACE_SECONDS + self.SHUTDOWN_DRAIN_SECONDS + SHUTDOWN_CLOSE_SECONDS


_DB_URL_FORM = "(expected e.g. mysql://user:password@host:3306/orderdb)"
# A host name (letters, digits, dots, hyphens, underscores) or an IPv4 address; IPv6 is
# checked by ipaddress.
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def _is_host(host: str) -> bool:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])  # a zone (%eth0) is allowed
        except ValueError:
            return False
        return True
    return _HOST_NAME.fullmatch(host) is not None


def _check_address(url: str, expected: str) -> None:
    """Raise ValueError unless ``url`` has a host and, when it gives one, a port from 1 to
    65535: a URL that names no reachable address fails at start, naming its variable, not
    later at each use. The message never repeats the URL (it may hold a password)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if port == 0:
        raise ValueError(f"the port is not a number from 1 to 65535 ({expected})")
    if not parts.hostname:
        raise ValueError(f"the URL has no host ({expected})")
    if not _is_host(parts.hostname):
        raise ValueError(f"the host is not a host name or an address ({expected})")


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise ConfigError naming each variable that cannot be parsed."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
