"""orders belong to a customer

Revision ID: orders_0009
Revises: orders_0008

``orders.customer_id`` (VARCHAR(255), nullable): the subject of the token that placed the
order (docs/security.md). Existing orders, and orders placed with authentication off, have
none: only staff and admins see them. A customer's orders are read by
``ix_orders_customer_id_id`` (customer_id, id), in id order as every listing is.

Plain ALTER TABLE ADD COLUMN and CREATE INDEX: nothing MySQL 8 lacks; batch mode copies the
table on SQLite. Each step checks first, so a run cut short can be run again.

Down: the index and the column go (the orders stay; who placed them is forgotten).
"""

import sqlalchemy as sa
from alembic import op

revision = "orders_0009"
down_revision = "orders_0008"
branch_labels = None
depends_on = None

TABLE = "orders"
COLUMN = "customer_id"
INDEX = "ix_orders_customer_id_id"


def _has_column() -> bool:
    return COLUMN in {str(c["name"]) for c in sa.inspect(op.get_bind()).get_columns(TABLE)}


def _has_index() -> bool:
    return INDEX in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(TABLE)}


def upgrade() -> None:
    if not _has_column():
        with op.batch_alter_table(TABLE) as batch:
            batch.add_column(sa.Column(COLUMN, sa.String(255), nullable=True))
    if not _has_index():
        op.create_index(INDEX, TABLE, [COLUMN, "id"])


def downgrade() -> None:
    if _has_index():
        op.drop_index(INDEX, table_name=TABLE)
    if _has_column():
        with op.batch_alter_table(TABLE) as batch:
            batch.drop_column(COLUMN)
