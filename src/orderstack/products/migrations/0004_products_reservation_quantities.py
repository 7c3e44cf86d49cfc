"""stock reservations record the units of each order and when it was cancelled

Revision ID: products_0004
Revises: products_0003

``stock_reservations.quantity``: the units the order asked for (a confirmed reservation
holds them all). Existing rows get 1, the one unit each order took until now.
``stock_reservations.cancelled_at``: when the order's cancellation was applied; its
outcome is then ``cancelled`` and it holds nothing.

Each step checks whether its column is there first, so a run cut short between two
statements (MySQL and MariaDB commit each DDL statement at once) can be run again. The
columns are changed in batch mode: plain ALTER TABLE on MySQL 8 and MariaDB, a table
copy on SQLite (which cannot drop a column in place everywhere).

Down: cancelled reservations become ``failed`` (they hold nothing, and the code before
this revision knows no ``cancelled``); the quantities are dropped.
"""

import sqlalchemy as sa
from alembic import op

from orderstack.storage.types import UtcDateTime

revision = "products_0004"
down_revision = "products_0003"
branch_labels = None
depends_on = None

TABLE = "stock_reservations"


def _columns() -> set[str]:
    return {str(c["name"]) for c in sa.inspect(op.get_bind()).get_columns(TABLE)}


def upgrade() -> None:
    existing = _columns()
    with op.batch_alter_table(TABLE) as batch:
        if "quantity" not in existing:
            batch.add_column(sa.Column("quantity", sa.Integer, nullable=False, server_default="1"))
        if "cancelled_at" not in existing:
            batch.add_column(sa.Column("cancelled_at", UtcDateTime, nullable=True))


def downgrade() -> None:
    existing = _columns()
    reservations = sa.table(TABLE, sa.column("outcome", sa.String(16)))
    op.execute(
        reservations.update().where(reservations.c.outcome == "cancelled").values(outcome="failed")
    )
    with op.batch_alter_table(TABLE) as batch:
        if "cancelled_at" in existing:
            batch.drop_column("cancelled_at")
        if "quantity" in existing:
            batch.drop_column("quantity")
