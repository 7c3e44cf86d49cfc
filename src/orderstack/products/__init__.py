"""The product service: products, their stock and its ledger, the stock taken for orders,
and the cache kept true to the rows. Inside: api | handlers | cache_repair >
repository > service > events | caching > domain (``lint-imports``). Never imports the
order service."""
