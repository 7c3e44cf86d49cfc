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
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
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

    # Each setting's description is its documentation: docs/configuration.md is generated from
    # these fields (`make docs`, orderstack/settings_doc.py), one section per `# -- ... --`
    # heading below, and a test fails when the committed file differs.

    # -- Database --------------------------------------------------------------------------
    DB_HOST: str | None = Field(
        default=None,
        description="MySQL/MariaDB host. Unset, with no `DATABASE_URL`: the embedded SQLite "
        "file `./var/orderstack.db`",
    )
    DB_PORT: int = Field(default=3306, ge=1, le=65535, description="database port")
    DB_USER: str = Field(default="root", description="database user")
    DB_PASSWORD: SecretStr = Field(
        default=SecretStr(""),
        description="database password; never logged, never echoed in a configuration error",
    )
    DB_NAME: str = Field(default="orderdb", description="database (schema) name")
    DATABASE_URL: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL (`mysql://u:p@h:3306/db`, `mariadb://…`, "
        "`postgresql://u:p@h:5432/db`, `sqlite:///path`); wins over `DB_*`. The async driver "
        "of its family is used whatever the URL names. A secret (it holds the password): "
        "never logged, never echoed in a configuration error",
    )
    DB_POOL_SIZE: int = Field(
        default=10,
        ge=1,
        le=200,
        description="database connections per process (as many again may overflow)",
    )
    DB_CONNECT_TIMEOUT_SECONDS: float = Field(
        default=5.0, gt=0, le=300, description="bound on opening a database connection"
    )
    DB_READ_TIMEOUT_SECONDS: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="bound on waiting for the server's reply on a connection (MySQL/MariaDB "
        "read timeout, PostgreSQL asyncpg `command_timeout`); ends a hang on a frozen host. "
        "Keep it the largest of the database bounds",
    )
    DB_STATEMENT_TIMEOUT_SECONDS: float = Field(
        default=15.0,
        ge=0,
        le=3600,
        description="server-side bound on one statement (`max_statement_time` on MariaDB, "
        "`max_execution_time` on MySQL, `statement_timeout` on PostgreSQL); 0: the server's "
        "default",
    )
    DB_LOCK_WAIT_TIMEOUT_SECONDS: int = Field(
        default=5,
        ge=0,
        le=3600,
        description="bound on waiting for any lock: row locks (`innodb_lock_wait_timeout`), "
        "metadata locks and the global read lock that holds `COMMIT` (`lock_wait_timeout`), "
        "PostgreSQL's `lock_timeout`; 0: the server's default",
    )
    DB_POOL_TIMEOUT_SECONDS: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="bound on waiting for a free pooled connection; past it a request is a "
        "503 `DATABASE_UNAVAILABLE`",
    )
    DB_INSERT_RETURNING: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="how a batch of new orders learns its ids: `auto` asks the server whether "
        "it has `INSERT … RETURNING` (MariaDB 10.5+, SQLite, PostgreSQL do; MySQL 8 does not), "
        "`off` forces the one-INSERT-per-order path (MySQL 8's) anywhere, `on` forces RETURNING",
    )

    # -- Broker and events -----------------------------------------------------------------
    RABBITMQ_URL: SecretStr | None = Field(
        default=None,
        description="`amqp://` or `amqps://` URL of the broker "
        "(`amqp://order-service:password@host:5672/vhost`), or of each node of a cluster, "
        "comma-separated (one user for all): a service connects to the first that answers "
        "and, when its node goes, reconnects to the next live one (docs/scale-out.md). Its "
        "user is the one the service publishes as (each message's AMQP `user_id`). "
        "Required by `orderstack serve`; unset, `orderstack dev` uses its "
        "embedded bus. A secret: never logged, never echoed in a configuration error",
    )
    ORDER_SERVICE_BROKER_USER: str | None = Field(
        default=None,
        description="the broker user the order service publishes as: an `order.created` or "
        "`order.cancelled` is believed only when its AMQP `user_id` is this user, else it is "
        "dead-lettered (`untrusted_publisher`). Unset: the user of this process's "
        "`RABBITMQ_URL` (both services sharing one user)",
    )
    PRODUCT_SERVICE_BROKER_USER: str | None = Field(
        default=None,
        description="the broker user the product service publishes as: an "
        "`order.qty_confirmed`, `order.qty_failed` or `product_created` is believed only from "
        "it. Unset: the user of this process's `RABBITMQ_URL`",
    )
    BROKER_USER_ID_CHECK: Literal["required", "when_present"] = Field(
        default="required",
        description="`required`: an event without an AMQP `user_id` is dead-lettered "
        "(`untrusted_publisher`), like one from the wrong user; `when_present`: one without "
        "is believed (the seed's publishers set none: only while running beside them), one "
        "from the wrong user still is not",
    )
    QUEUE_TYPE: Literal["classic", "quorum"] = Field(
        default="quorum",
        description="type of the work and dead-letter queues: `quorum` (replicated over a "
        "cluster's nodes, with the broker's delivery limit), or `classic` for a broker that "
        "needs it. Every service of one broker must use the same; existing queues change type "
        'only through `orderstack migrate-queues` (docs/CONTRACT.md, "Queue types")',
    )
    EVENT_BATCH_SIZE: int = Field(
        default=1,
        ge=1,
        le=500,
        description="up to how many consecutive events of one name a relay sends to RabbitMQ "
        "in one message (a batch, docs/events.md). 1: one event per message, as the seed's "
        "consumers read them. Above 1 only when every consumer bound to these events is this "
        "project's (each takes a batch's events one by one); fewer messages cost the broker "
        "and both services less CPU per order",
    )
    LOCAL_BUS_PATH: str | None = Field(
        default=None,
        description="SQLite file where the embedded bus keeps its messages (`orderstack dev` "
        "without `RABBITMQ_URL`). Unset: beside the SQLite database (`orderstack.db` → "
        "`orderstack.bus.db`), or `var/orderstack.bus.db` when the database is a server; "
        "`:memory:` keeps them in memory only (not durable)",
    )
    OUTBOX_BATCH_SIZE: int = Field(
        default=500, ge=1, le=5000, description="outbox rows one relay round publishes"
    )
    OUTBOX_RELAY_WORKERS: int = Field(
        default=2,
        ge=1,
        le=16,
        description="relay rounds in flight at once per process, on disjoint rows",
    )
    CONSUMER_PREFETCH: int = Field(
        default=200, ge=1, le=5000, description="unacknowledged deliveries a consumer may hold"
    )
    CONSUMER_BATCH_SIZE: int = Field(
        default=100, ge=1, le=5000, description="deliveries settled in one transaction"
    )
    BATCH_LINGER_SECONDS: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description="how long the relay and the consumers let work gather after a wake-up",
    )

    # -- Retention of the outbox and the inbox ---------------------------------------------
    OUTBOX_RETENTION_SECONDS: int = Field(
        default=3600,
        ge=0,
        le=365 * 86400,
        description="sent outbox rows older than this are deleted (unsent rows never are)",
    )
    INBOX_RETENTION_SECONDS: int = Field(
        default=7 * 86400,
        ge=3600,
        le=365 * 86400,
        description="processed-event records older than this (7 days) are deleted; must "
        "outlast any redelivery (a message held through a broker outage, a dead letter "
        "replayed later): an event arriving after its record is gone would apply twice",
    )
    PRUNE_INTERVAL_SECONDS: float = Field(
        default=60.0,
        ge=1,
        le=86400,
        description="how often each service prunes its outbox and inbox, in the background "
        "(messaging/retention.py)",
    )
    PRUNE_BATCH_SIZE: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="rows deleted per pruning statement (one short transaction each)",
    )
    PRUNE_PAUSE_SECONDS: float = Field(
        default=0.05, ge=0, le=10, description="pause between two pruning statements"
    )

    # -- Cache -----------------------------------------------------------------------------
    REDIS_HOST: str | None = Field(
        default=None,
        description="Redis as `host:port` (e.g. `redis:6379`), database 0. Unset, with no "
        "`REDIS_URL`: the in-process cache",
    )
    REDIS_URL: SecretStr | None = Field(
        default=None,
        description="`redis://host:port/db`, `rediss://` or `unix://` URL; wins over "
        "`REDIS_HOST`. With a password (`requirepass`) or an ACL user: "
        "`redis://:password@host:port/db`, `redis://user:password@host:port/db`. A secret: "
        "never logged, never echoed in a configuration error",
    )
    CACHE_TTL_SECONDS: int = Field(
        default=300, ge=1, le=86400, description="lifetime of a `product:{id}` cache entry"
    )
    CACHE_REPAIR_INTERVAL_SECONDS: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="how often the product service puts recently changed rows back into the "
        "cache (version-checked; products/cache_repair.py); bounds how long a cache write "
        "lost to a crash or a cache blip can be served",
    )
    STOCK_DRIFT_CHECK_SECONDS: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        description="how often each product service replica measures stock drift for "
        "`stock_drift_units` on /metrics (the ledger check of `orderstack reconcile`, one "
        "scan of every product; products/drift.py), never on a scrape; 0: never (no gauge)",
    )

    # -- HTTP servers ----------------------------------------------------------------------
    HOST: str = Field(
        default="0.0.0.0",
        description="listen address of the HTTP servers; `orderstack dev` listens on "
        "127.0.0.1 unless this is set",
    )
    PORT: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="port of `orderstack serve`; unset: 8080 for `serve order`, 3000 for "
        "`serve product`",
    )
    ORDER_PORT: int = Field(
        default=8080, ge=1, le=65535, description="order service port under `orderstack dev`"
    )
    PRODUCT_PORT: int = Field(
        default=3000, ge=1, le=65535, description="product service port under `orderstack dev`"
    )
    MAX_BODY_BYTES: int = Field(
        default=65536,
        ge=1024,
        le=10 * 1024 * 1024,
        description="largest request body; larger: 413",
    )
    MAX_HEADER_BYTES: int = Field(
        default=16384,
        ge=1024,
        le=1024 * 1024,
        description="largest request head (request line and headers, counted as they "
        "arrive); larger: 431 `HEADERS_TOO_LARGE` and the connection closed (serving.py)",
    )
    HEADER_TIMEOUT_SECONDS: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="how long a request's head may take to arrive, from the connection's "
        "opening (or a kept-alive connection's next byte); past it 408 `REQUEST_TIMEOUT` and "
        "the connection closed: a client that connects and sends nothing, or a byte at a "
        "time, holds nothing for longer",
    )
    BODY_TIMEOUT_SECONDS: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="how long a request's body may take to arrive after its head; past it "
        "408 `REQUEST_TIMEOUT` and the connection closed. A body is read in full before its "
        "request takes an in-flight slot (`MAX_IN_FLIGHT`, web/limits.py)",
    )
    KEEP_ALIVE_SECONDS: float = Field(
        default=75.0,
        gt=0,
        le=3600,
        description="an idle kept-alive connection is closed after this long; keep it longer "
        "than the clients and balancers in front keep theirs, so that they close first",
    )
    MAX_CONNECTIONS: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="open connections per server (each service's port); a request on one "
        "past it is 503 `OVERLOADED` with `Retry-After: 1` and its connection closed",
    )
    MAX_REQUESTS_PER_CONNECTION: int = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="after this many requests a connection's last answer says `Connection: "
        "close` (spreads long-lived clients over replicas again); 0: no bound",
    )
    REQUEST_TIMEOUT_SECONDS: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="every request's deadline; past it a 503 `REQUEST_TIMEOUT` (nothing "
        "changed) or `COMMIT_OUTCOME_UNKNOWN` (a write was being committed) with `Retry-After` "
        "(probes and `/metrics` exempt; web/deadline.py). The database's lock bound "
        "(`DB_LOCK_WAIT_TIMEOUT_SECONDS`) ends most waits before it",
    )
    ALLOWED_HOSTS: str | None = Field(
        default=None,
        description="the host names a request's `Host` header may give (any port), "
        "comma-separated: `api.example.com,localhost`, `*.example.com` for its subdomains, "
        "`*` for any; another is 400 (web/hosts.py: a DNS-rebinding page in a browser "
        "cannot reach the services). Unset: `orderstack serve` takes any, `orderstack dev` "
        "only `localhost`, `127.0.0.1` and `[::1]`",
    )
    PUBLIC_BASE_URL: str | None = Field(
        default=None,
        description="the services' address as clients reach them (`https://api.example.com`), "
        "the base of the `Link` header's next-page URL; unset: that URL is relative "
        "(`</orders?after=…>`), never built from the request's `Host` header",
    )
    DOCS_ENABLED: bool = Field(
        default=True,
        description="`/docs` (Swagger UI) and `/redoc` on each service, their scripts and "
        "styles served by the service itself (web/docs.py), nothing from another site; "
        "`false`: both 404 (`/openapi.json` stays)",
    )
    HTTP_HOT_PATHS: bool = Field(
        default=True,
        description="`GET /products/{id}` answered from the cache, `POST /products` and "
        "`POST /orders` (JSON body, no `Idempotency-Key`) taken before FastAPI's routing into "
        "their routes' own handlers (web/hot.py): the same answers, headers, errors and "
        "metrics, for a fraction of the CPU; anything else goes to the route. `false`: every "
        "request is routed",
    )

    # -- Admission under overload ----------------------------------------------------------
    MAX_IN_FLIGHT: int = Field(
        default=1024,
        ge=1,
        le=100_000,
        description="the most requests served at once per process; beyond the adaptive limit "
        "under it a 503 `OVERLOADED` with `Retry-After: 1` at once (probes exempt; "
        "admission.py)",
    )
    ADMISSION_TARGET_SECONDS: float = Field(
        default=0.1,
        gt=0,
        le=60,
        description="the adaptive limit shrinks (×0.8 per 0.1 s) once, for a second, even the "
        "fastest answer of each tenth of a second took longer than this (or the event loop "
        "lagged a fifth of it), and grows back (+5 %) as soon as not",
    )
    ORDER_SETTLE_TARGET_SECONDS: float = Field(
        default=0.5,
        ge=0,
        le=600,
        description="new orders are refused (503 `OVERLOADED`) with a probability that rises "
        "once orders accepted by the replica have settled later than this after their 201 for "
        "two seconds (the settling pipeline is behind); 0: never",
    )

    # -- Probes, logs, metrics and traces --------------------------------------------------
    HEALTH_TIMEOUT_SECONDS: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="bound on each dependency probe of `/health` and `/readyz`; a probe past "
        "it is `down`",
    )
    HEALTH_CACHE_SECONDS: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="how long one probe round is reused by `/health` and `/readyz` (a flood "
        "costs one round; 0: a round per request; never more than one in flight)",
    )
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="log level"
    )
    LOG_FORMAT: Literal["json", "console"] = Field(
        default="json",
        description="structured logs, one JSON object per line, or human-readable",
    )
    ACCESS_LOG: bool = Field(
        default=False,
        description="one JSON log line per request answered: `method`, `route` (the "
        "template), `status`, `duration_ms`, `request_id` (web/request_id.py)",
    )
    METRICS_ENABLED: bool = Field(
        default=True,
        description="`/metrics` on each service (Prometheus text format) and the HTTP request "
        "counting behind it; `false`: no route (404) and no counting",
    )
    METRICS_TOKEN: SecretStr | None = Field(
        default=None,
        description="bearer token `/metrics` requires (`Authorization: Bearer …`, Prometheus' "
        "`authorization` scrape setting); without it, or with another, 401. Unset: "
        "`/metrics` is open (keep the port private). Its database and broker readings are "
        "reused for a second, whoever scrapes",
    )
    OTEL_EXPORTER_OTLP_ENDPOINT: str | None = Field(
        default=None,
        description="traces (OpenTelemetry, tracing.py) on, sent over OTLP/HTTP to "
        "`<endpoint>/v1/traces`, e.g. `http://otel-collector:4318`; unset: off, nothing of "
        "the SDK is imported",
    )

    # -- Stopping --------------------------------------------------------------------------
    SHUTDOWN_GRACE_SECONDS: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="on SIGTERM, how long the requests in flight get to be answered (new "
        "connections are refused at once); those still running then are cancelled "
        '(docs/CONTRACT.md, "Stopping")',
    )
    SHUTDOWN_DRAIN_SECONDS: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="then, the bound on the consumer settling the batch it holds (commit, "
        "ack) and the relay's last round; what is cut off is redelivered or stays unsent, "
        "nothing is lost",
    )

    # -- Order service ---------------------------------------------------------------------
    ORDER_PRICE_CHECK: Literal["strict", "off"] = Field(
        default="strict",
        description="what a client's `total_price` is: `strict`, the total it agreed to (the "
        "order fails with reason `price_changed`, nothing taken, unless the catalog total of its "
        "lines is the same; an order without one is priced by the catalog); `off`, the seed's "
        "behaviour (recorded as sent; the catalog prices the lines beside it)",
    )
    PRODUCT_SERVICE_URL: str = Field(
        default="http://127.0.0.1:3000",
        description="base URL of the product service, or several replicas comma-separated "
        "(lookups are spread over them, a retry goes to the next one)",
    )
    PRODUCT_CLIENT_TIMEOUT_SECONDS: float = Field(
        default=2.0, gt=0, le=60, description="bound on one HTTP attempt of a product lookup"
    )
    PRODUCT_CLIENT_RETRIES: int = Field(
        default=2, ge=0, le=10, description="further attempts of a product lookup after the first"
    )
    PRODUCT_CLIENT_RETRY_BUDGET_SECONDS: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="total wait between the attempts of one product lookup (jittered backoff "
        "or `Retry-After`); a `Retry-After` that does not fit fails the lookup at once (503). "
        "`OVERLOADED` is never retried",
    )
    ORDER_WRITE_BATCH: int = Field(
        default=200,
        ge=1,
        le=5000,
        description="most new orders stored in one transaction (group commit)",
    )
    ORDER_HOLD_SECONDS: int = Field(
        default=0,
        ge=0,
        le=86400,
        description="an order placed without `hold_seconds` is held this long: once its units "
        "are taken it is `reserved` until `POST /orders/{id}/confirm`, else it expires and "
        "its units go back (docs/api.md, holds); 0: no hold (confirmed at once), else 5 to 86400",
    )
    ORDER_EXPIRY_INTERVAL_SECONDS: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="how often each order service replica expires the reserved orders whose "
        "hold ended (a hold outlives its end by about this much at most, unless confirmed: "
        "a confirm after the end is refused whatever the sweep's delay)",
    )
    ORDER_SWEEP_INTERVAL_SECONDS: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="how often the pending-order sweeper looks for orders pending too long "
        "(docs/orders.md)",
    )
    ORDER_PENDING_RESEND_SECONDS: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="an order pending this long (since creation) gets its `order.created` "
        "again; after its n-th resend it waits this × 2^n (jittered down by up to half, never "
        "less than this) before the next",
    )
    ORDER_PENDING_RESEND_MAX_SECONDS: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        description="the longest wait between two resends of one pending order (the backoff's cap)",
    )
    ORDER_SWEEP_BATCH: int = Field(
        default=100,
        ge=1,
        le=5000,
        description="orders resent per sweeper transaction (at most 20 transactions per round)",
    )
    ORDER_EVENTS_POLL_SECONDS: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="how often a process with open order-status streams (GET /orders/events)"
        " reads order_status_events for new changes: one shared reader per process",
    )
    ORDER_EVENTS_GAP_SECONDS: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="how long the order-status streams wait for a missing event id (a"
        " transaction still open, or rolled back) before passing it; later events wait"
        " behind it, so that a resume after an id never misses one below it",
    )
    ORDER_EVENTS_HEARTBEAT_SECONDS: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="a comment line on an idle order-status stream this often (keeps"
        " proxies from closing it, and finds a client gone)",
    )
    ORDER_EVENT_STREAMS_MAX: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="most order-status streams open at once in one process (past it: 503);"
        " streams are outside MAX_IN_FLIGHT and REQUEST_TIMEOUT_SECONDS; 0 turns them off",
    )
    ORDER_WEBHOOKS: bool = Field(
        default=False,
        description="`true`: admins register URLs (`/admin/webhooks`) that each order status"
        " change is posted to, signed, in order, at least once ([docs/api.md](api.md)#webhooks);"
        " every order service replica delivers",
    )
    ORDER_WEBHOOK_POLL_SECONDS: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="how often each replica looks for webhooks due a delivery",
    )
    ORDER_WEBHOOK_TIMEOUT_SECONDS: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="how long a webhook's URL has to answer a POST (else: tried again later)",
    )
    ORDER_WEBHOOK_RETRY_HORIZON_SECONDS: float = Field(
        default=86_400.0,
        gt=0,
        le=30 * 86_400,
        description="how long a webhook batch is retried (jittered exponential delays up to 5"
        " minutes) before it is dead-lettered and its hook paused until `orderstack webhooks"
        " replay` (docs/api.md)",
    )

    # -- Authentication and authorisation --------------------------------------------------
    AUTH_MODE: Literal["jwt", "off"] | None = Field(
        default=None,
        description="`jwt`: every request but the open ones (probes, the catalog's reads) "
        "needs a bearer JWT (docs/security.md); `off`: no authentication, as the seed "
        "(orders have no owner). Unset: `jwt` when AUTH_SIGNING_KEY or AUTH_JWKS_URL is set; "
        "otherwise `orderstack serve` refuses to start and `orderstack dev` runs with `off`, "
        "on 127.0.0.1 only",
    )
    AUTH_SIGNING_KEY: SecretStr | None = Field(
        default=None,
        description="shared HMAC key (HS256, at least 32 bytes) that signs and checks tokens: "
        "development, tests and `orderstack token`. Several keys, `kid:key,kid:key`: tokens "
        "carrying one of those `kid`s are checked with that key, and the first one signs "
        "(key rotation)",
    )
    AUTH_JWKS_URL: str | None = Field(
        default=None,
        description="the identity provider's JSON Web Key Set (RS256/ES256 public keys by "
        "`kid`), fetched at start and again when a token names an unknown `kid` (at most "
        "every AUTH_JWKS_REFRESH_SECONDS)",
    )
    AUTH_JWKS_REFRESH_SECONDS: float = Field(
        default=30.0,
        ge=0.0,
        le=3600.0,
        description="the least time between two fetches of the key set for an unknown `kid`",
    )
    AUTH_ISSUER: str = Field(
        default="orderstack",
        min_length=1,
        description="the `iss` every token must carry (the identity provider's issuer URL)",
    )
    AUTH_AUDIENCE: str = Field(
        default="orderstack",
        min_length=1,
        description="the `aud` every token must carry (one of its audiences)",
    )
    AUTH_LEEWAY_SECONDS: float = Field(
        default=30.0,
        ge=0.0,
        le=300.0,
        description="clock skew allowed on `exp`, `nbf` and `iat`",
    )
    AUTH_ROLE_CLAIM: str = Field(
        default="role",
        min_length=1,
        description="the claim holding the caller's role (`customer`, `staff`, `admin`; a "
        "list: the highest it names)",
    )
    AUTH_PUBLIC_CATALOG: bool = Field(
        default=True,
        description="`GET /products…` open to callers without a token; `false`: any role's "
        "token (the order service then sends one it signs with AUTH_SIGNING_KEY)",
    )
    ADMIN_TOKEN: SecretStr | None = Field(
        default=None,
        description="a static bearer token with the admin role, beside JWTs (a break-glass "
        "operator credential; with AUTH_MODE=off the only way into `/admin/*`). Unset with "
        "AUTH_MODE=off: those routes answer 403. `orderstack dev` with auth off uses "
        "`dev-admin-token` when unset and says so at start-up",
    )

    @field_validator("ORDER_HOLD_SECONDS")
    @classmethod
    def _hold_in_bounds(cls, value: int) -> int:
        if 0 < value < 5:
            raise ValueError("a hold is 0 (none) or 5 to 86400 seconds")
        return value

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

    @field_validator("DATABASE_URL", mode="before")
    @classmethod
    def _parseable_db_url(cls, given: object) -> str | None:
        value = _secret_text(given)
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

    @field_validator("REDIS_URL", mode="before")
    @classmethod
    def _parseable_redis_url(cls, given: object) -> str | None:
        value = _secret_text(given)
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

    @field_validator("RABBITMQ_URL", mode="before")
    @classmethod
    def _parseable_amqp_url(cls, given: object) -> str | None:
        value = _secret_text(given)
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
        if len({_amqp_user(url) for url in urls}) > 1:
            # The user is who the service publishes as (AMQP user_id): one, whichever node.
            raise ValueError("every node's URL must log in as the same user")
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

    @field_validator("ALLOWED_HOSTS")
    @classmethod
    def _host_names(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return ",".join(host_patterns(value))

    @field_validator("PUBLIC_BASE_URL")
    @classmethod
    def _public_base_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        expected = "expected http(s)://host[:port][/prefix]"
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or parts.query or parts.fragment:
            raise ValueError(expected)
        if parts.username is not None or "@" in parts.netloc:
            raise ValueError(f"no user or password in it ({expected})")
        _check_address(value, expected)
        return value.rstrip("/")

    @field_validator("AUTH_SIGNING_KEY")
    @classmethod
    def _signing_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_signing_keys(value.get_secret_value())
        return value

    @field_validator("AUTH_JWKS_URL")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http(s) URL of a JSON Web Key Set")
        _check_address(value, "expected an http(s) URL of a JSON Web Key Set")
        return value

    # -- derived values ------------------------------------------------------------

    @property
    def auth_mode(self) -> Literal["jwt", "off"] | None:
        """AUTH_MODE, else ``jwt`` when keys are configured; None: neither (``serve``
        refuses to start, ``dev`` runs with ``off``)."""
        if self.AUTH_MODE is not None:
            return self.AUTH_MODE
        return "jwt" if self.AUTH_SIGNING_KEY or self.AUTH_JWKS_URL else None

    @property
    def signing_keys(self) -> list[tuple[str, bytes]]:
        """AUTH_SIGNING_KEY as ``(kid, key)`` pairs, the signing one first; [] when unset."""
        if self.AUTH_SIGNING_KEY is None:
            return []
        return parse_signing_keys(self.AUTH_SIGNING_KEY.get_secret_value())

    @property
    def database_url(self) -> URL:
        """The async SQLAlchemy URL: DATABASE_URL, else the DB_* parts, else SQLite."""
        if self.DATABASE_URL:
            url = make_url(self.DATABASE_URL.get_secret_value())
        elif self.DB_HOST:
            password = self.DB_PASSWORD.get_secret_value()
            url = make_url(
                f"mysql://{quote(self.DB_USER, safe='')}:{quote(password, safe='')}"
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
    def amqp_url(self) -> str | None:
        """RABBITMQ_URL's text, password included: for the bus's connection only (the
        setting itself is a SecretStr, so that no repr or log line shows it)."""
        return self.RABBITMQ_URL.get_secret_value() if self.RABBITMQ_URL else None

    @property
    def broker_user(self) -> str | None:
        """The user this process logs in to the broker as (RABBITMQ_URL's; ``guest`` when
        the URL names none, as the AMQP client does); None without a broker."""
        url = self.amqp_url
        return _amqp_user(url.split(",")[0]) if url else None

    @property
    def redis_url(self) -> str | None:
        """REDIS_URL's text (password included: for the cache's connection only), else
        REDIS_HOST's."""
        if self.REDIS_URL:
            return self.REDIS_URL.get_secret_value()
        if self.REDIS_HOST:
            return f"redis://{self.REDIS_HOST}/0"
        return None

    @property
    def allowed_hosts(self) -> tuple[str, ...] | None:
        """ALLOWED_HOSTS as patterns (web/hosts.py); None: any host."""
        if self.ALLOWED_HOSTS is None or "*" in self.ALLOWED_HOSTS.split(","):
            return None
        return tuple(self.ALLOWED_HOSTS.split(","))

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


# What `orderstack dev` answers when ALLOWED_HOSTS is unset: this machine's own names.
LOCAL_HOSTS = "localhost,127.0.0.1,[::1]"


def host_patterns(value: str) -> list[str]:
    """ALLOWED_HOSTS as lower-case patterns: a host name or address (an IPv6 one in
    brackets, as a Host header writes it), ``*.name`` (its subdomains) or ``*``. Raises
    ValueError for anything else (a port, a scheme, a path)."""
    patterns = []
    for entry in (e.strip().lower() for e in value.split(",")):
        if entry in ("", "*"):
            patterns += [entry] if entry else []
            continue
        name = entry.removeprefix("*.")
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if not _is_host(name):
            raise ValueError(
                f"{entry!r} is not a host name, an address, *.name or * "
                "(no scheme, no port: any port is allowed)"
            )
        if ":" in name:
            entry = f"[{name}]"
        patterns.append(entry)
    if not patterns:
        raise ValueError("no host name given")
    return patterns


# The kid of a signing key given without one (AUTH_SIGNING_KEY=<key>).
DEFAULT_KEY_ID = "k1"
MIN_SIGNING_KEY_BYTES = 32  # HS256: a key shorter than the hash is weaker than it (RFC 7518)


def parse_signing_keys(value: str) -> list[tuple[str, bytes]]:
    """``key`` or ``kid:key,kid:key`` as ``(kid, key)`` pairs, the first signing. Raises
    ValueError (never naming a key) for a short key, an empty or repeated kid."""
    pairs: list[tuple[str, bytes]] = []
    entries = value.split(",") if "," in value or ":" in value else [value]
    for entry in entries:
        kid, sep, key = entry.strip().partition(":")
        if not sep:
            kid, key = DEFAULT_KEY_ID, kid
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", kid):
            raise ValueError("each key is `kid:key`, the kid of letters, digits, `.`, `_`, `-`")
        if len(key.encode()) < MIN_SIGNING_KEY_BYTES:
            raise ValueError(f"each signing key is at least {MIN_SIGNING_KEY_BYTES} bytes")
        if kid in {k for k, _ in pairs}:
            raise ValueError(f"the kid {kid!r} is given twice")
        pairs.append((kid, key.encode()))
    return pairs


def _is_host(host: str) -> bool:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])  # a zone (%eth0) is allowed
        except ValueError:
            return False
        return True
    return _HOST_NAME.fullmatch(host) is not None


def _secret_text(value: object) -> str | None:
    """The text of a secret setting as given (a string, or a SecretStr an override passed)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if value is None or isinstance(value, str):
        return value
    raise ValueError("expected a string")


def _amqp_user(url: str) -> str:
    """The user an amqp:// URL logs in as: its user, percent-decoded; ``guest`` (the AMQP
    client's default) when it names none."""
    return unquote(urlsplit(url).username or "") or "guest"


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
