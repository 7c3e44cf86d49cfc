"""indexes for listing orders by status and by product and status, in id order

Revision ID: orders_0004
Revises: orders_0003

``GET /orders`` pages by id (``WHERE id > :after ORDER BY id LIMIT n``), optionally filtered
by ``status`` and ``product_id``. Each filter combination then reads one index range, in
order, and stops after ``n`` rows:

- no filter: the primary key;
- ``product_id``: ``ix_orders_product_id_id`` (orders_0001);
- ``status``: ``ix_orders_status_id``, added here (``ix_orders_status_updated_at`` is in
  update order, not id order);
- ``product_id`` and ``status``: ``ix_orders_product_id_status_id``, added here.

Plain CREATE INDEX / DROP INDEX: MySQL 8 and MariaDB build them in place without blocking
writes, SQLite too. Each step checks whether its index is there first, so a run cut short
between two statements (MySQL commits each DDL statement at once) can be run again.
"""

import sqlalchemy as sa
from alembic import op

revision = "orders_0004"
down_revision = "orders_0003"
branch_labels = None
depends_on = None

TABLE = "orders"
INDEXES = {
    "ix_orders_status_id": ["status", "id"],
    "ix_orders_product_id_status_id": ["product_id", "status", "id"],
}


def _existing() -> set[str]:
    return {str(ix["name"]) for ix in sa.inspect(op.get_bind()).get_indexes(TABLE)}


def upgrade() -> None:
    existing = _existing()
    for name, columns in INDEXES.items():
        if name not in existing:
            op.create_index(name, TABLE, columns)


def downgrade() -> None:
    existing = _existing()
    for name in reversed(list(INDEXES)):
        if name in existing:
            op.drop_index(name, table_name=TABLE)
