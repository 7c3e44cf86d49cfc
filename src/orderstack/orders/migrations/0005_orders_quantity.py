"""orders record their quantity

Revision ID: orders_0005
Revises: orders_0004

``orders.quantity``: the units of the product the order asks for (``POST /orders``
``quantity``, 1 to 1000). Existing rows get 1, the one unit every order asked for until now.

The step checks whether the column is there first, so it can be run again after a run cut
short. Batch mode: a plain ALTER TABLE on MySQL 8 and MariaDB, a table copy on SQLite
where dropping a column in place is not always possible.

Down: the column is dropped (orders keep their status; ``cancelled`` was a status already).
"""

import sqlalchemy as sa
from alembic import op

revision = "orders_0005"
down_revision = "orders_0004"
branch_labels = None
depends_on = None

TABLE = "orders"


def _has_quantity() -> bool:
    return "quantity" in {str(c["name"]) for c in sa.inspect(op.get_bind()).get_columns(TABLE)}


def upgrade() -> None:
    if not _has_quantity():
        with op.batch_alter_table(TABLE) as batch:
            batch.add_column(sa.Column("quantity", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    if _has_quantity():
        with op.batch_alter_table(TABLE) as batch:
            batch.drop_column("quantity")
