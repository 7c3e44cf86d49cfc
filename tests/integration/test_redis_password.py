"""The product cache on a Redis that asks for a password (compose sets ``requirepass``; an
ACL user works the same): the REDIS_URL carries it, and the adapter reads and writes with
it. Tested with an ACL user made for the test on the loopback Redis (its shared default
user is left as it is), allowed no dangerous command (FLUSHALL, KEYS, CONFIG...) but INFO,
which the cache reads its server's id with; deleted at the end. A wrong password is an
outage: misses, never an error, and the log line says why without the password."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from decimal import Decimal
from urllib.parse import quote

import pytest
import redis
import structlog

from harness.sandbox import REDIS_HOST, REDIS_PORT, Sandbox
from orderstack.cache.port import CachedProduct
from orderstack.cache.redis import RedisProductCache
from orderstack.config import load_settings
from orderstack.infrastructure import cache_from_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def acl_user(sandbox: Sandbox) -> Iterator[tuple[str, str]]:
    """(user, password) of a new ACL user of the loopback Redis; deleted in a finally."""
    user = f"{sandbox.name}_cache"
    password = f"pw:{secrets.token_hex(8)}@/#"  # URL-special characters, percent-encoded
    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5)
    try:
        admin.execute_command(
            "ACL", "SETUSER", user, "reset", "on", f">{password}", "~*", "+@all", "-@dangerous",
            "+info",
        )  # fmt: skip
        yield user, password
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


def _url(sandbox: Sandbox, user: str, password: str) -> str:
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"redis://{auth}@{REDIS_HOST}:{REDIS_PORT}/{sandbox.redis_db}"


async def test_the_cache_works_with_a_password_in_its_url(
    sandbox: Sandbox, acl_user: tuple[str, str]
) -> None:
    user, password = acl_user
    settings = load_settings(REDIS_URL=_url(sandbox, user, password))
    cache = cache_from_settings(settings)  # as the services build it
    assert isinstance(cache, RedisProductCache)
    product = CachedProduct(id=7, version=1, name="Locked", price=Decimal("2.50"), qty=3)
    try:
        assert await cache.is_up()
        await cache.put(product)
        assert await cache.get_many([7]) == [product]
        assert await cache.server_id()  # INFO, allowed to this user
    finally:
        await cache.close()


async def test_a_wrong_password_is_an_outage_logged_without_the_password(
    sandbox: Sandbox, acl_user: tuple[str, str]
) -> None:
    user, password = acl_user
    wrong = f"not-{password}"
    cache = RedisProductCache(_url(sandbox, user, wrong))
    try:
        with structlog.testing.capture_logs() as logs:
            assert not await cache.is_up()
            assert await cache.get_many([7]) == [None]  # a miss, not an error
    finally:
        await cache.close()
    logged = repr(logs)
    assert "redis unavailable" in logged
    assert wrong not in logged and quote(wrong, safe="") not in logged
