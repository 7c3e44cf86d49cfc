"""Redis adapter of the product cache. An outage degrades to misses; it never fails a request."""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from orderstack.cache.port import CachedProduct, cache_key

log = structlog.get_logger(__name__)

# Set each entry only when nothing newer is cached under its key; the version check and the
# write are one step. KEYS: the entries' keys; ARGV: (entry, version) per key, then the TTL.
# One call for a batch of entries (each a command of its own cost redis-py ~4x the CPU).
_PUT_IF_NEWER = """
local ttl = ARGV[#ARGV]
local written = 0
for i, key in ipairs(KEYS) do
  local entry, version = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local current = redis.call('GET', key)
  local newer = false
  if current then
    local ok, doc = pcall(cjson.decode, current)
    newer = ok and type(doc) == 'table' and tonumber(doc['version']) ~= nil
            and tonumber(doc['version']) >= version
  end
  if not newer then
    redis.call('SET', key, entry, 'EX', ttl)
    written = written + 1
  end
end
return written
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
        # Several entries under one id: the newest wins, as with separate calls.
        newest: dict[int, CachedProduct] = {}
        for product in products:
            if product.id not in newest or newest[product.id].version < product.version:
                newest[product.id] = product
        args: list[bytes | int] = []
        for product in newest.values():
            args += [product.to_json(), product.version]
        try:
            await self._put_script(keys=[cache_key(i) for i in newest], args=[*args, self._ttl])
        except (RedisError, OSError) as exc:
            self._degraded("put", exc)

    async def is_up(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
