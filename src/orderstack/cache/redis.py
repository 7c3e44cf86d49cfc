"""Redis adapter of the product cache. An outage degrades to misses; it never fails a request."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from orderstack.cache.port import MARKER_KEY, CachedProduct, CacheMarker, cache_key, trusted

log = structlog.get_logger(__name__)

# Set each entry unless an entry of its epoch and the same or a newer version is cached;
# the check and the write are one step. An entry of another epoch (another database's, or
# unstamped) is replaced: versions only compare within one epoch. KEYS: the entries' keys;
# ARGV: (entry, version, epoch) per key, then replace_only ('1': only keys that exist),
# then the TTL. One call for a batch of entries (each a command of its own cost redis-py
# ~4x the CPU).
_PUT_IF_NEWER = """
local ttl = ARGV[#ARGV]
local replace_only = ARGV[#ARGV - 1] == '1'
local written = 0
for i, key in ipairs(KEYS) do
  local entry, version, epoch = ARGV[3 * i - 2], tonumber(ARGV[3 * i - 1]), ARGV[3 * i]
  local current = redis.call('GET', key)
  local keep = false
  if current then
    local ok, doc = pcall(cjson.decode, current)
    keep = ok and type(doc) == 'table' and doc['epoch'] == epoch
           and tonumber(doc['version']) ~= nil and tonumber(doc['version']) >= version
  else
    keep = replace_only
  end
  if not keep then
    redis.call('SET', key, entry, 'EX', ttl)
    written = written + 1
  end
end
return written
"""

_LOG_EVERY_SECONDS = 5.0


# An entry decoded, by its exact bytes: a hot product's entry is the same bytes read after
# read, and decoding it (JSON, a Decimal, two datetimes) was a twentieth of a cached GET.
# Keyed by what Redis just answered, a changed entry is decoded afresh: nothing is answered
# that Redis did not send. Raises as ``from_json`` does (a failure is not kept).
_decoded = functools.lru_cache(maxsize=4096)(CachedProduct.from_json)


def _entry(raw: bytes | str | None, epoch: str) -> CachedProduct | None:
    """The entry Redis answered, decoded; None when absent, not ours, corrupt or of another
    epoch."""
    if raw is None:
        return None
    try:
        entry = _decoded(raw)
    except (ValueError, KeyError, TypeError):
        return None  # not ours or corrupt: treat as a miss
    return entry if entry.epoch == epoch else None


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

    async def get_many(
        self, product_ids: Sequence[int], epoch: str = ""
    ) -> list[CachedProduct | None]:
        if not product_ids:
            return []
        try:
            # The marker in the same round trip: it decides whether any entry is trusted.
            marker, *raws = await self._redis.mget([MARKER_KEY, *map(cache_key, product_ids)])
        except (RedisError, OSError) as exc:
            self._degraded("get", exc)
            return [None] * len(product_ids)
        if not trusted(CacheMarker.decode(marker), epoch):
            return [None] * len(product_ids)
        return [_entry(raw, epoch) for raw in raws]

    async def put(self, *products: CachedProduct, replace_only: bool = False) -> None:
        if not products:
            return
        # Several entries under one id: the newest wins, as with separate calls.
        newest: dict[int, CachedProduct] = {}
        for product in products:
            if product.id not in newest or newest[product.id].version < product.version:
                newest[product.id] = product
        args: list[bytes | int | str] = []
        for product in newest.values():
            args += [product.to_json(), product.version, product.epoch]
        args += ["1" if replace_only else "0", self._ttl]
        try:
            await self._put_script(keys=[cache_key(i) for i in newest], args=args)
        except (RedisError, OSError) as exc:
            self._degraded("put", exc)

    async def server_id(self) -> str | None:
        """Redis's ``run_id``: new at every start of the server, its own on each replica."""
        for attempt in range(2):  # a connection the restart broke fails once, then reconnects
            try:
                info = await self._redis.info("server")
                return str(info["run_id"])
            except (RedisError, OSError, KeyError) as exc:
                if attempt:
                    self._degraded("info", exc)
        return None

    async def marker(self) -> CacheMarker | None:
        try:
            return CacheMarker.decode(await self._redis.get(MARKER_KEY))
        except (RedisError, OSError) as exc:
            self._degraded("get", exc)
            return None

    async def set_marker(self, marker: CacheMarker) -> None:
        try:
            await self._redis.set(MARKER_KEY, marker.encode())
        except (RedisError, OSError) as exc:
            self._degraded("set", exc)

    async def is_up(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
