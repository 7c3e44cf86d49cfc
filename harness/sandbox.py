"""A throwaway database, RabbitMQ vhost and Redis database on this machine's servers.

The database is on MariaDB (the default) or, with ``database="postgresql"``, on PostgreSQL.
By default the services reach them as the servers' admin users (root or postgres, guest).
With ``credentials=True`` the sandbox also gets its own database user and RabbitMQ user,
each with a non-empty password full of URL-special characters, allowed on its database and
vhost only: the way an operator deploys, and what ``seed_env`` hands to the services in
the seed's variables (DB_HOST/DB_USER/DB_PASSWORD/DB_NAME, a percent-encoded RABBITMQ_URL;
MariaDB only: the seed's variables mean MySQL).

With ``service_users=True`` each service also gets a broker user of its own, allowed what
docs/security.md gives it (messaging/trust.py ``broker_permissions``: its own queues, its
own events' routing keys): ``service_env(service)`` is that service's environment.
``add_amqp_user`` makes one more user in the vhost (a test's forger), dropped with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

import asyncmy
import asyncpg
import redis
from sqlalchemy.engine import URL, make_url

from harness import rabbit
from orderstack.events import Service
from orderstack.messaging.topology import EXCHANGE
from orderstack.messaging.trust import broker_permissions

# Defaults match the machine's servers; override with ORDERSTACK_TEST_MYSQL_* etc.
MYSQL_HOST = os.environ.get("ORDERSTACK_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("ORDERSTACK_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("ORDERSTACK_TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("ORDERSTACK_TEST_MYSQL_PASSWORD", "")
PG_HOST = os.environ.get("ORDERSTACK_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ORDERSTACK_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("ORDERSTACK_TEST_PG_USER", "postgres")
PG_PASSWORD = os.environ.get("ORDERSTACK_TEST_PG_PASSWORD", "")
AMQP_HOST = os.environ.get("ORDERSTACK_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("ORDERSTACK_TEST_AMQP_PORT", "5672"))
REDIS_HOST = os.environ.get("ORDERSTACK_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("ORDERSTACK_TEST_REDIS_PORT", "6379"))


class ServersUnavailable(RuntimeError):
    pass


# The Redis databases a sandbox may use (0 holds the claims below). Two sandboxes alive at
# once (pytest-xdist workers, a chaos run's second sandbox, someone else's run) must never
# share one: each claims its database with SET NX on a key of database 0 and gives it back
# when dropped. A claim left by a killed run expires after CLAIM_SECONDS.
REDIS_DATABASES = range(1, 16)
CLAIM_KEY = "orderstack:sandbox:redis-db:{n}"
CLAIM_SECONDS = 2 * 3600
CLAIM_WAIT_SECONDS = 120.0
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


def _claim_value(owner: str) -> str:
    """What a claim holds: its sandbox, this host and this process (``name host pid``)."""
    return f"{owner} {socket.gethostname()} {os.getpid()}"


def _holder_gone(value: bytes | str | None) -> bool:
    """Whether a claim was left by a process of this host that no longer runs (a run
    killed before it dropped its sandboxes: a timed-out worker, a Ctrl-C)."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value or ""
    parts = text.split()
    if len(parts) != 3 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False  # another host's, or an older form: its expiry frees it
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


def claim_redis_db(owner: str) -> int:
    """A Redis database of REDIS_DATABASES no other live sandbox holds, claimed for
    ``owner`` (waits, bounded, while all are taken; a claim whose process is gone is taken
    over at once)."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_timeout=5)
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    value = _claim_value(owner)
    try:
        while True:
            candidates = list(REDIS_DATABASES)
            secrets.SystemRandom().shuffle(candidates)
            for n in candidates:
                key = CLAIM_KEY.format(n=n)
                if client.set(key, value, nx=True, ex=CLAIM_SECONDS):
                    return n
                held = client.get(key)
                if (
                    held is not None
                    and _holder_gone(held)
                    and client.eval(_RELEASE, 1, key, held)
                    and client.set(key, value, nx=True, ex=CLAIM_SECONDS)
                ):
                    return n
            if time.monotonic() > deadline:
                raise redis.RedisError(
                    f"every Redis database of {REDIS_DATABASES} held by another sandbox"
                    f" for {CLAIM_WAIT_SECONDS:g}s"
                )
            time.sleep(0.5)
    finally:
        client.close()


def release_redis_db(n: int, owner: str) -> None:
    """Gives back ``owner``'s claim on database ``n`` (someone else's is left alone)."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_timeout=5)
    try:
        client.eval(_RELEASE, 1, CLAIM_KEY.format(n=n), _claim_value(owner))
    finally:
        client.close()


@contextlib.asynccontextmanager
async def mysql_admin() -> AsyncIterator[asyncmy.Connection]:
    """A connection to the MariaDB server as its admin (no database chosen), closed on the
    way out: the sandboxes' databases, and the faults and checks that act on the server."""
    conn = await asyncmy.connect(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=MYSQL_USER,
        password=MYSQL_PASSWORD,
        connect_timeout=5,
    )
    try:
        yield conn
    finally:
        conn.close()


async def _mysql(sql: str) -> None:
    async with mysql_admin() as conn, conn.cursor() as cursor:
        await cursor.execute(sql)


async def _postgres(sql: str) -> None:
    """One statement on the server's maintenance database ``postgres``, outside any
    transaction (CREATE DATABASE cannot run inside one)."""
    conn = await asyncpg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        password=PG_PASSWORD or None,
        database="postgres",
        timeout=5,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_string(value: str) -> str:
    """A PostgreSQL string literal (standard_conforming_strings: only quotes double)."""
    return "'" + value.replace("'", "''") + "'"


def _sql_string(value: str) -> str:
    """A MariaDB string literal (the values quoted here are generated, never user input)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Sandbox:
    """``create()`` it, pass ``env`` to the services, ``drop()`` it at the end."""

    tag: str = "test"
    # Its own database and RabbitMQ users with passwords (see the module docstring).
    credentials: bool = False
    # Where its database lives: the MariaDB server, or the PostgreSQL one.
    database: Literal["mariadb", "postgresql"] = "mariadb"
    name: str = field(init=False)
    # Claimed by create() (claim_redis_db), given back by drop(); 0 until then.
    redis_db: int = field(init=False, default=0)
    db_user: str = field(init=False)
    db_password: str = field(init=False, repr=False)
    amqp_user: str = field(init=False)
    amqp_password: str = field(init=False, repr=False)
    # A broker user per service (see the module docstring).
    service_users: bool = False
    # The broker users of this sandbox created so far (removed by drop): name -> password.
    _amqp_users: dict[str, str] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.name = f"os_{self.tag}_{secrets.token_hex(4)}"
        if self.credentials:
            self.db_user = self.amqp_user = f"{self.name}_u"
            # Every character that means something in a URL's authority: @ : / % and more.
            self.db_password = f"p@ss:w/rd%{secrets.token_hex(4)}#?&+ x"
            self.amqp_password = f"mq@p:a/ss%{secrets.token_hex(4)}#?&+ y"
        elif self.postgresql:
            self.db_user, self.db_password = PG_USER, PG_PASSWORD
            self.amqp_user = self.amqp_password = "guest"  # noqa: S105 - the default user
        else:
            self.db_user, self.db_password = MYSQL_USER, MYSQL_PASSWORD
            self.amqp_user = self.amqp_password = "guest"  # noqa: S105 - the default user

    @property
    def postgresql(self) -> bool:
        return self.database == "postgresql"

    @property
    def passwords(self) -> list[str]:
        """The passwords of the sandbox's own users (none without ``credentials`` or
        ``service_users``)."""
        own = [self.db_password, self.amqp_password] if self.credentials else []
        return own + list(self._amqp_users.values())

    def service_user(self, service: Service) -> str:
        """``service``'s broker user (the sandbox's one user without ``service_users``)."""
        if not self.service_users:
            return self.amqp_user
        return f"{self.name}_{'orders' if service is Service.ORDERS else 'products'}"

    def amqp_url_of(self, user: str) -> str:
        """The vhost's URL as ``user`` (one of this sandbox's, or its own user)."""
        password = self._amqp_users.get(user, self.amqp_password)
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"amqp://{auth}@{AMQP_HOST}:{AMQP_PORT}/{self.name}"

    def service_env(self, service: Service) -> dict[str, str]:
        """``env`` as ``service`` runs: its own broker URL, and who publishes what."""
        return {
            **self.env,
            "RABBITMQ_URL": self.amqp_url_of(self.service_user(service)),
            "ORDER_SERVICE_BROKER_USER": self.service_user(Service.ORDERS),
            "PRODUCT_SERVICE_BROKER_USER": self.service_user(Service.PRODUCTS),
        }

    def add_amqp_user(
        self,
        tag: str,
        *,
        configure: str = "^$",
        write: str = ".*",
        read: str = "^$",
        topic_write: str | None = None,
    ) -> str:
        """A new broker user of this vhost (``<name>_<tag>``, a random password), allowed
        these resources (by default: publish anywhere, nothing else), and on the events
        exchange ``topic_write`` routing keys when given; its URL is ``amqp_url_of``."""
        user = f"{self.name}_{tag}"
        self._amqp_users[user] = f"u-{secrets.token_hex(8)}"
        rabbit.add_user(user, self._amqp_users[user])
        rabbit.set_permissions(self.name, user, configure, write, read)
        if topic_write is not None:
            rabbit.set_topic_permissions(self.name, user, EXCHANGE, topic_write, ".*")
        return user

    def _add_service_users(self) -> None:
        for service in Service:
            user = self.service_user(service)
            self._amqp_users[user] = f"s-{secrets.token_hex(8)}"
            rabbit.add_user(user, self._amqp_users[user])
            allowed = broker_permissions(service)
            rabbit.set_permissions(self.name, user, allowed.configure, allowed.write, allowed.read)
            rabbit.set_topic_permissions(
                self.name, user, EXCHANGE, allowed.topic_write, allowed.topic_read
            )

    @property
    def database_url(self) -> str:
        auth = quote(self.db_user, safe="")
        if self.db_password:
            auth += ":" + quote(self.db_password, safe="")
        if self.postgresql:
            return f"postgresql://{auth}@{PG_HOST}:{PG_PORT}/{self.name}"
        return f"mysql://{auth}@{MYSQL_HOST}:{MYSQL_PORT}/{self.name}"

    @property
    def engine_url(self) -> URL:
        """``database_url`` with the async driver the services use (asyncmy, asyncpg)."""
        driver = "postgresql+asyncpg" if self.postgresql else "mysql+asyncmy"
        return make_url(self.database_url).set(drivername=driver)

    @property
    def amqp_url(self) -> str:
        auth = f"{quote(self.amqp_user, safe='')}:{quote(self.amqp_password, safe='')}"
        return f"amqp://{auth}@{AMQP_HOST}:{AMQP_PORT}/{self.name}"

    @property
    def redis_url(self) -> str:
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.redis_db}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "RABBITMQ_URL": self.amqp_url,
            "REDIS_URL": self.redis_url,
        }

    @property
    def seed_env(self) -> dict[str, str]:
        """The same servers in the seed's variables: the database in parts (the password
        as it is, unencoded), the broker as a percent-encoded URL. MariaDB only: DB_HOST
        and its neighbours mean a MySQL server."""
        if self.postgresql:
            raise ValueError("the seed's DB_* variables name a MySQL server, not PostgreSQL")
        return {
            "DB_HOST": MYSQL_HOST,
            "DB_PORT": str(MYSQL_PORT),
            "DB_USER": self.db_user,
            "DB_PASSWORD": self.db_password,
            "DB_NAME": self.name,
            "RABBITMQ_URL": self.amqp_url,
            "REDIS_URL": self.redis_url,
        }

    def queue_backlog(self) -> dict[str, int]:
        """Messages per queue of the vhost, ready and unacknowledged together, as the
        queues count them now (a passive declare counts only the ready ones: a message a
        consumer holds but has not finished would not show). One rabbitmqctl call."""
        return rabbit.queue_totals(self.name)

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """(ready, unacknowledged) per queue of the vhost (rabbit.queue_counts)."""
        return rabbit.queue_counts(self.name)

    def create(self) -> Sandbox:
        try:
            if self.postgresql:
                self._create_postgres_database()
            else:
                self._create_mariadb_database()
            self.redis_db = claim_redis_db(self.name)
            redis.Redis(
                host=REDIS_HOST, port=REDIS_PORT, db=self.redis_db, socket_timeout=5
            ).flushdb()
            if self.credentials:
                rabbit.add_user(self.amqp_user, self.amqp_password)
            rabbit.add_vhost(self.name)
            rabbit.set_permissions(self.name, self.amqp_user)
            if self.service_users:
                self._add_service_users()
        except (
            OSError,
            rabbit.RabbitAdminError,
            redis.RedisError,
            asyncmy.errors.Error,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            self.drop()  # what was made so far
            raise ServersUnavailable(f"cannot prepare sandbox {self.name}: {exc!r}") from exc
        return self

    def _create_mariadb_database(self) -> None:
        asyncio.run(_mysql(f"CREATE DATABASE `{self.name}`"))
        if self.credentials:
            user = f"{_sql_string(self.db_user)}@'%'"
            asyncio.run(_mysql(f"CREATE USER {user} IDENTIFIED BY {_sql_string(self.db_password)}"))
            asyncio.run(_mysql(f"GRANT ALL PRIVILEGES ON `{self.name}`.* TO {user}"))

    def _create_postgres_database(self) -> None:
        # The names are generated ([a-z0-9_]), so quoting them as identifiers is enough.
        if self.credentials:
            asyncio.run(
                _postgres(
                    f'CREATE ROLE "{self.db_user}" LOGIN PASSWORD {_pg_string(self.db_password)}'
                )
            )
            asyncio.run(_postgres(f'CREATE DATABASE "{self.name}" OWNER "{self.db_user}"'))
        else:
            asyncio.run(_postgres(f'CREATE DATABASE "{self.name}"'))

    def drop(self) -> None:
        """Best effort: every step is tried, whatever failed before."""
        errors: list[str] = []
        steps = [self._drop_database, lambda: rabbit.delete_vhost(self.name)]
        if self.redis_db:  # claimed: emptied, then given back (once)
            steps.append(self._drop_redis_db)
        if self.credentials:
            steps += [
                self._drop_database_user,
                lambda: rabbit.delete_user(self.amqp_user),
            ]
        steps += [functools.partial(rabbit.delete_user, user) for user in self._amqp_users]
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep dropping the rest
                errors.append(repr(exc))
        if errors:
            print(f"sandbox {self.name}: cleanup incomplete: {errors}")

    def _drop_redis_db(self) -> None:
        n, self.redis_db = self.redis_db, 0
        try:
            redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=n, socket_timeout=5).flushdb()
        finally:
            release_redis_db(n, self.name)

    def _drop_database(self) -> None:
        if self.postgresql:
            # FORCE ends the sessions still on it (a service that was killed, a pool).
            asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        else:
            asyncio.run(_mysql(f"DROP DATABASE IF EXISTS `{self.name}`"))

    def _drop_database_user(self) -> None:
        if self.postgresql:
            asyncio.run(_postgres(f'DROP ROLE IF EXISTS "{self.db_user}"'))
        else:
            asyncio.run(_mysql(f"DROP USER IF EXISTS {_sql_string(self.db_user)}@'%'"))
