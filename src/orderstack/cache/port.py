"""What is cached under ``product:{id}`` and the port both services use to read and write it.

Every entry carries the product row's ``version``; a write only lands when it is newer than
what is cached. A reader that loaded a row just before a stock change therefore cannot put
the old figure back over the new one, and a deleted product is kept as a tombstone (a newer
version marked deleted) instead of a hole that a late reader could fill.

Every entry also carries the ``epoch`` of the product database it was read from (a random
token made with the database: products/migrations/products_0006). Versions only compare
within one epoch: a fresh database starts again at version 1, and the entries another
database left behind must be neither served nor kept over its rows. A reader passes the
epoch it speaks for; an entry of any other epoch is a miss, and a write replaces it.

Beside the entries, under ``MARKER_KEY``, the product service publishes a ``CacheMarker``:
the epoch the entries speak for, the cache server it last checked them on (a restart or a
failover changes it) and whether a full repair is under way. While the marker names
another epoch, or a repair, readers trust no entry (products/cache_repair.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import orjson

MARKER_KEY = "orderstack:cache-identity"
# The header of the product service's ``GET /products/{id}`` answers naming the epoch of
# the database they were read from: how an order service in another process learns it.
EPOCH_HEADER = "X-Database-Epoch"


def cache_key(product_id: int) -> str:
    return f"product:{product_id}"


@dataclass(frozen=True, slots=True)
class CachedProduct:
    id: int
    version: int
    name: str = ""
    price: Decimal = Decimal(0)
    qty: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deleted: bool = False
    # The product database it was read from; "" for an entry nobody stamped (a database's
    # epoch is never empty, so a reader of a database never trusts it).
    epoch: str = ""

    def to_json(self) -> bytes:
        # Field by field: dataclasses.asdict deep-copies every value first.
        created, updated = self.created_at, self.updated_at
        return orjson.dumps(
            {
                "id": self.id,
                "version": self.version,
                "name": self.name,
                "price": str(self.price),
                "qty": self.qty,
                "created_at": created.isoformat() if created else None,
                "updated_at": updated.isoformat() if updated else None,
                "deleted": self.deleted,
                "epoch": self.epoch,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> CachedProduct:
        doc: dict[str, Any] = orjson.loads(raw)
        return cls(
            id=int(doc["id"]),
            version=int(doc["version"]),
            name=str(doc.get("name", "")),
            price=Decimal(str(doc.get("price", "0"))),
            qty=int(doc.get("qty", 0)),
            created_at=datetime.fromisoformat(doc["created_at"]) if doc.get("created_at") else None,
            updated_at=datetime.fromisoformat(doc["updated_at"]) if doc.get("updated_at") else None,
            deleted=bool(doc.get("deleted", False)),
            epoch=str(doc.get("epoch") or ""),
        )


@dataclass(frozen=True, slots=True)
class CacheMarker:
    """What the product service publishes under ``MARKER_KEY``: the ``epoch`` of the
    database whose entries the cache holds, the ``server`` (the cache server's id, Redis's
    ``run_id``) they were last checked on, and ``repairing`` while a full repair runs."""

    epoch: str
    server: str
    repairing: bool = False

    def encode(self) -> bytes:
        return f"{self.epoch} {self.server}{' repairing' if self.repairing else ''}".encode()

    @classmethod
    def decode(cls, raw: bytes | str | None) -> CacheMarker | None:
        """The marker, or None when absent or unreadable (not ours)."""
        if raw is None:
            return None
        words = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw).split(" ")
        if len(words) == 2:
            return cls(words[0], words[1])
        if len(words) == 3 and words[2] == "repairing":
            return cls(words[0], words[1], repairing=True)
        return None

    def trusts(self, epoch: str) -> bool:
        """Whether a reader of ``epoch`` may serve entries of that epoch under this marker."""
        return self.epoch == epoch and not self.repairing


def trusted(marker: CacheMarker | None, epoch: str) -> bool:
    """The readers' rule on the marker: no marker (a cache that never had one, or lost it)
    leaves the entries' own epoch to decide; a marker must name ``epoch`` and no repair.
    The entry's epoch is checked besides: a marker can be overwritten by another database's
    service sharing the cache, an entry's epoch cannot lie."""
    return marker is None or marker.trusts(epoch)


@dataclass
class KnownEpoch:
    """The product database's epoch as the product service running in this process last
    read it, for the order service beside it (both services in one process, one database).
    None until read, and always None in a process without the product service."""

    value: str | None = None


class ProductCache(Protocol):
    async def get_many(
        self, product_ids: Sequence[int], epoch: str = ""
    ) -> list[CachedProduct | None]:
        """One answer per id, in order, in one round trip with the marker: the cached entry
        of ``epoch`` (maybe a tombstone), or None on a miss, for an entry of another epoch,
        while the marker does not trust ``epoch`` (``trusted``), or when the cache is down."""

    async def put(self, *products: CachedProduct, replace_only: bool = False) -> None:
        """Store each entry unless an entry of its epoch and the same or a newer version is
        cached; an entry of another epoch is replaced (several in one round trip).
        ``replace_only``: only where an entry is cached already (a full repair corrects
        what is there, it does not fill the cache). Never raises: an outage is a miss."""

    async def server_id(self) -> str | None:
        """The cache server's identity: it changes when the server restarts (maybe from an
        old snapshot) or another one takes over. None when it cannot be reached."""

    async def marker(self) -> CacheMarker | None:
        """The marker (``MARKER_KEY``); None when there is none or the cache is down."""

    async def set_marker(self, marker: CacheMarker) -> None:
        """Publish ``marker``. Never raises."""

    async def is_up(self) -> bool: ...

    async def close(self) -> None: ...
