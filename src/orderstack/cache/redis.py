"""Redis adapter of the product cache. An outage degrades to misses; it never fails a request."""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from orderstack.cache.port import CachedProduct, cache_key

log = structlog.get_logger(__name__)

# Set only when nothing newer is cached; the version check and the write are one step.
_PUT_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and tonumber(doc['version']) ~= nil
     and tonumber(doc['version']) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""

_LOG_EVERY_SECONDS = 5.0


def _entry(raw: bytes | str | None) -> CachedProduct | None:
    if raw is None:
        return None
    try:
        return CachedProduct.from_json(raw)
    except (ValueError, KeyError, TypeError):
        return None  # not ours or corrupt: treat as a miss


class RedisProductCache:
    def __init__(self, url: str, ttl_seconds: int = 300, timeout: float = 0.25) -> None:
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=10,
        )
        self._ttl = ttl_seconds
        self._put_script = self._redis.register_script(_PUT_IF_NEWER)
        self._last_logged = 0.0

    def _degraded(self, operation: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_logged > _LOG_EVERY_SECONDS:
            self._last_logged = now
            log.warning("redis unavailable, cache bypassed", operation=operation, error=repr(exc))

    async def get_many(self, product_ids: Sequence[int]) -> list[CachedProduct | None]:
        if not product_ids:
            return []
        try:
            raws = await self._redis.mget([cache_key(i) for i in product_ids])
        except (RedisError, OSError) as exc:
            self._degraded("get", exc)
            return [None] * len(product_ids)
        return [_entry(raw) for raw in raws]

    async def put(self, *products: CachedProduct) -> None:
        if not products:
            return
        try:
            if len(products) == 1:  # EVALSHA alone: a pipeline would first ask SCRIPT EXISTS
                (product,) = products
                await self._put_script(
                    keys=[cache_key(product.id)],
                    args=[product.to_json(), product.version, self._ttl],
                )
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for product in products:
                    await self._put_script(
                        keys=[cache_key(product.id)],
                        args=[product.to_json(), product.version, self._ttl],
                        client=pipe,
                    )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._degraded("put", exc)

    async def is_up(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
