"""the pending-order sweeper backs off per order

Revision ID: orders_0007
Revises: orders_0006

``orders.resends`` (INTEGER NOT NULL DEFAULT 0): how many times the sweeper sent the order's
``order.created`` again. ``orders.resend_at`` (nullable): when the next resend is due; the
n-th resend waits about ``ORDER_PENDING_RESEND_SECONDS`` × 2^n, at most
``ORDER_PENDING_RESEND_MAX_SECONDS`` (docs/orders.md). NULL, as on every row from before
this step and every new order: the first resend is due ``ORDER_PENDING_RESEND_SECONDS``
after ``updated_at``, as before. Nothing to backfill.

Index ``ix_orders_status_resend_at`` (status, resend_at, updated_at): the sweeper's two
ranges, never-resent orders by ``updated_at`` and resent ones by ``resend_at``, each read in
order and stopped after a batch.

Plain ADD COLUMN (constant default) and CREATE INDEX: nothing MySQL 8 lacks; batch mode
copies the table on SQLite only where it must. Each step checks first, so a run cut short
can be run again. Down: the index and the columns are dropped.
"""

import sqlalchemy as sa
from alembic import op

from orderstack.storage.types import UtcDateTime

revision = "orders_0007"
down_revision = "orders_0006"
branch_labels = None
depends_on = None

TABLE = "orders"
INDEX = "ix_orders_status_resend_at"


def _columns() -> set[str]:
    return {str(c["name"]) for c in sa.inspect(op.get_bind()).get_columns(TABLE)}


def _indexes() -> set[str]:
    return {str(ix["name"]) for ix in sa.inspect(op.get_bind()).get_indexes(TABLE)}


def upgrade() -> None:
    columns = _columns()
    if "resends" not in columns:
        with op.batch_alter_table(TABLE) as batch:
            batch.add_column(sa.Column("resends", sa.Integer, nullable=False, server_default="0"))
    if "resend_at" not in columns:
        with op.batch_alter_table(TABLE) as batch:
            batch.add_column(sa.Column("resend_at", UtcDateTime, nullable=True))
    if INDEX not in _indexes():
        op.create_index(INDEX, TABLE, ["status", "resend_at", "updated_at"])


def downgrade() -> None:
    if INDEX in _indexes():
        op.drop_index(INDEX, table_name=TABLE)
    columns = _columns()
    for column in ("resend_at", "resends"):
        if column in columns:
            with op.batch_alter_table(TABLE) as batch:
                batch.drop_column(column)
