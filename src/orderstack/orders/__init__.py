"""The order service: orders, their intake (idempotent, group-committed), and their
settlement by the product service's answers. Inside: api | handlers | sweeper >
repository > service > catalog > events > domain (``lint-imports``). Never imports the
product service."""
