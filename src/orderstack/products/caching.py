"""A product as ``product:{id}`` holds it, and back."""

from __future__ import annotations

from orderstack.cache.port import CachedProduct
from orderstack.products.domain import Product


def cache_entry(product: Product) -> CachedProduct:
    return CachedProduct(
        id=product.id,
        version=product.version,
        name=product.name,
        price=product.price,
        qty=product.qty,
        created_at=product.created_at,
        updated_at=product.updated_at,
    )


def tombstone(product_id: int, version: int) -> CachedProduct:
    """What a deleted product leaves in the cache: a newer version, marked deleted."""
    return CachedProduct(id=product_id, version=version, deleted=True)


def product_from(entry: CachedProduct) -> Product | None:
    """The product an entry describes; None for a tombstone or an incomplete entry."""
    if entry.deleted or entry.created_at is None or entry.updated_at is None:
        return None
    return Product(
        id=entry.id,
        name=entry.name,
        price=entry.price,
        qty=entry.qty,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
        version=entry.version,
    )
