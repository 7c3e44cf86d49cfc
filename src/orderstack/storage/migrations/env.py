"""Alembic environment shared by both services; migrate.py passes the connection and the
service's own version table, so each service migrates only its own tables."""

from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=config.attributes["version_table"],
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
