"""Seconds ``GET /products/{id}`` serves stock older than the database after the cache
server restarts from an older snapshot.

    python -m harness.cache_restart [--products 200] [--watch 330] [--database-url URL]

Starts a redis-server of its own (a free port, a temporary directory, no automatic saves;
never the shared one) and the product service in this process on it (SQLite in the
temporary directory unless ``--database-url``), with the default settings
(``CACHE_REPAIR_INTERVAL_SECONDS`` 5, ``CACHE_TTL_SECONDS`` 300). It caches every product,
writes a snapshot (``SAVE``), changes every product's stock through the API, dates those
changes back beyond every window of the periodic repair (as for changes made long ago),
stops Redis and starts it again from the snapshot, then reads every product through the
API until every answer shows its row's stock. Prints the seconds from the restart to the
last stale answer, and stops Redis (``finally``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import redis

from harness.processes import free_port
from orderstack.bootstrap import product_app
from orderstack.config import load_settings
from orderstack.infrastructure import Infrastructure
from orderstack.products.repository import products
from orderstack.storage.engine import create_engine


class OwnRedis:
    """A redis-server of the caller's, on ``port``, its RDB file in ``directory``."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory = port, directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own arguments
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--dir", str(self.directory), "--dbfilename", "dump.rdb"]
            + ["--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def save(self) -> None:
        redis.Redis(port=self.port, socket_timeout=5).save()

    def stop(self) -> None:
        """Without saving: a restart then loads the last SAVE's file."""
        if self.process is None:
            return
        with contextlib.suppress(redis.RedisError):
            redis.Redis(port=self.port, socket_timeout=5).shutdown(nosave=True)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@contextlib.contextmanager
def own_redis() -> Iterator[OwnRedis]:
    with tempfile.TemporaryDirectory(prefix="orderstack-redis-") as directory:
        server = OwnRedis(free_port(), Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.asynccontextmanager
async def product_service(
    database_url: str, redis_url: str, **settings_: object
) -> AsyncIterator[httpx.AsyncClient]:
    """The product service in this process (its lifespan: migrations, the cache repair),
    with ``settings_`` over the defaults, and a client of it (its ``_transport`` reaches
    the app: an order service's catalog can be given it)."""
    settings = load_settings(
        DATABASE_URL=database_url, REDIS_URL=redis_url, LOCAL_BUS_PATH=":memory:", **settings_
    )
    infra = Infrastructure.from_settings(settings, both_services=True)
    app = product_app(settings, infra)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://products"
            ) as http,
        ):
            yield http
    finally:
        await infra.close()


async def stale_seconds(database_url: str, count: int, watch: float, **settings: object) -> float:
    """Seconds stale after the restart (``watch``: still stale then), with ``count``
    products and ``settings`` over the defaults."""
    with own_redis() as cache:
        async with product_service(database_url, cache.url, **settings) as http:
            ids = []
            for i in range(count):
                created = await http.post(
                    "/products", json={"name": f"P{i}", "price": 1, "qty": 100}
                )
                ids.append(created.json()["id"])
            for product_id in ids:  # cached (the create's write-through, and the reads)
                assert (await http.get(f"/products/{product_id}")).json()["qty"] == 100
            cache.save()
            for product_id in ids:
                answer = await http.post(
                    f"/products/{product_id}/stock-adjustments",
                    json={"delta": -1, "reason": "sold"},
                )
                assert answer.status_code == 201, answer.text
            engine = create_engine(load_settings(DATABASE_URL=database_url).database_url)
            try:
                async with engine.begin() as conn:  # changed long ago, for the repair's windows
                    long_ago = datetime.now(UTC) - timedelta(seconds=600)
                    await conn.execute(products.update().values(updated_at=long_ago))
            finally:
                await engine.dispose()
            cache.stop()
            cache.start()  # from the snapshot: every entry at qty 100 again
            restarted = time.monotonic()
            last_stale = None
            while time.monotonic() - restarted < watch:
                answers = [(await http.get(f"/products/{i}")).json()["qty"] for i in ids]
                now = time.monotonic()
                if any(qty != 99 for qty in answers):
                    last_stale = now
                elif last_stale is not None or now - restarted > 1:
                    return (last_stale or restarted) - restarted
                await asyncio.sleep(0.1)
            return watch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--watch", type=float, default=330.0, help="give up after (s)")
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orderstack-db-") as directory:
        url = args.database_url or f"sqlite:///{directory}/orderstack.db"
        seconds = asyncio.run(stale_seconds(url, args.products, args.watch))
    print(f"stale for {seconds:.1f} s after the cache restarted from an older snapshot")


if __name__ == "__main__":
    main()
