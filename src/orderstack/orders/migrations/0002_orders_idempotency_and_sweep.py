"""exact idempotency keys with a request fingerprint; index for the pending-order sweeper

Revision ID: orders_0002
Revises: orders_0001

``request_id`` kept the table's default collation, which on MySQL/MariaDB is case- and
accent-insensitive: ``abc``, ``ABC`` and ``äbc`` were one key. It now uses a binary
collation, chosen by what the server has: a NO PAD one where there is one (MySQL 8's
``utf8mb4_0900_bin``, MariaDB's ``utf8mb4_nopad_bin``), so that trailing spaces count too,
else ``utf8mb4_bin``. SQLite (BINARY) and PostgreSQL (deterministic collations) compare
exactly already. Only ALTER TABLE / CREATE INDEX: nothing MySQL 8 lacks.
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "orders_0002"
down_revision = "orders_0001"
branch_labels = None
depends_on = None

_BINARY_COLLATIONS = ("utf8mb4_0900_bin", "utf8mb4_nopad_bin", "utf8mb4_bin")


def _binary_collation(bind: sa.Connection) -> str:
    available = set(
        bind.execute(
            sa.text(
                "SELECT COLLATION_NAME FROM information_schema.COLLATIONS"
                " WHERE CHARACTER_SET_NAME = 'utf8mb4'"
            )
        ).scalars()
    )
    return next(c for c in _BINARY_COLLATIONS if c in available)


def _table_charset_and_collation(bind: sa.Connection) -> tuple[str, str]:
    row = bind.execute(
        sa.text(
            "SELECT c.CHARACTER_SET_NAME, t.TABLE_COLLATION FROM information_schema.TABLES t"
            " JOIN information_schema.COLLATIONS c ON c.COLLATION_NAME = t.TABLE_COLLATION"
            " WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_NAME = 'orders'"
        )
    ).one()
    charset, collation = str(row[0]), str(row[1])
    # They are spliced into DDL below: make sure they are plain names.
    if not all(re.fullmatch(r"[A-Za-z0-9_]+", name) for name in (charset, collation)):
        raise RuntimeError(f"unexpected collation {collation!r} of table orders")
    return charset, collation


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "mysql":
        # MODIFY keeps the unique index; keys unique case-insensitively are unique exactly.
        op.execute(
            "ALTER TABLE orders MODIFY request_id VARCHAR(64) CHARACTER SET utf8mb4"
            f" COLLATE {_binary_collation(bind)} NULL"
        )
    op.add_column("orders", sa.Column("request_fingerprint", sa.String(64), nullable=True))
    op.create_index("ix_orders_status_updated_at", "orders", ["status", "updated_at"])


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "mysql":
        # Checked before any change: MySQL commits each DDL statement at once.
        charset, collation = _table_charset_and_collation(bind)
        _refuse_keys_that_would_merge(bind, charset, collation)
    op.drop_index("ix_orders_status_updated_at", table_name="orders")
    with op.batch_alter_table("orders") as batch:  # SQLite rebuilds the table for this
        batch.drop_column("request_fingerprint")
    if bind.dialect.name == "mysql":
        # Back to the table's default character set and collation, as orders_0001 made it.
        op.execute(
            "ALTER TABLE orders MODIFY request_id VARCHAR(64)"
            f" CHARACTER SET {charset} COLLATE {collation} NULL"
        )


def _refuse_keys_that_would_merge(bind: sa.Connection, charset: str, collation: str) -> None:
    """Keys that differ only in case or accents cannot share the old unique index. They are
    refused rather than merged: merging would answer one client's retry with another
    client's order."""
    key = f"CONVERT(request_id USING {charset}) COLLATE {collation}"
    clash = bind.execute(
        sa.text(
            f"SELECT MIN({key}) AS k FROM orders WHERE request_id IS NOT NULL"  # noqa: S608 - plain names, checked above
            f" GROUP BY {key} HAVING COUNT(*) > 1 LIMIT 1"
        )
    ).first()
    if clash is not None:
        raise RuntimeError(
            "cannot downgrade orders_0002: idempotency keys differing only in case or accents"
            f" exist (e.g. {clash.k!r}); clear request_id on all but one order of each such"
            " key, then downgrade again"
        )
