"""What is cached under ``product:{id}`` and the port both services use to read and write it.

Every entry carries the product row's ``version``; a write only lands when it is newer than
what is cached. A reader that loaded a row just before a stock change therefore cannot put
the old figure back over the new one, and a deleted product is kept as a tombstone (a newer
version marked deleted) instead of a hole that a late reader could fill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import orjson


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
        )


class ProductCache(Protocol):
    async def get_many(self, product_ids: Sequence[int]) -> list[CachedProduct | None]:
        """One answer per id, in order, in one round trip: the cached entry (maybe a
        tombstone), or None on a miss or when the cache is down."""

    async def put(self, *products: CachedProduct) -> None:
        """Store each entry unless a newer version of it is cached (several in one round
        trip). Never raises: a cache outage is a miss."""

    async def is_up(self) -> bool: ...

    async def close(self) -> None: ...
