"""orders held for a while: reserved, then confirmed by the client or expired

Revision ID: orders_0011
Revises: orders_0010

``orders.hold_seconds`` (INTEGER, nullable): how long a held order's units stay reserved
once the product service took them (NULL: no hold, the order is confirmed at once, as
before). ``orders.expires_at`` (nullable): when a ``reserved`` order expires, on the
database clock. ``orders.payment_reference`` (VARCHAR(128), nullable): what the client sent
with its confirm. The expiry sweep reads due reserved orders by ``ix_orders_status_expires_at``
(status, expires_at).

Plain ALTER TABLE ADD COLUMN and CREATE INDEX: nothing MySQL 8 lacks; batch mode copies the
table on SQLite. Each step checks first, so a run cut short can be run again.

Down: the index and the columns go. Orders still ``reserved`` or ``expired`` keep their
status, which the code before this revision does not know: confirm or expire them first.
"""

import sqlalchemy as sa
from alembic import op

from orderstack.storage.types import UtcDateTime

revision = "orders_0011"
down_revision = "orders_0010"
branch_labels = None
depends_on = None

TABLE = "orders"
INDEX = "ix_orders_status_expires_at"


def _new_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("hold_seconds", sa.Integer, nullable=True),
        sa.Column("expires_at", UtcDateTime, nullable=True),
        sa.Column("payment_reference", sa.String(128), nullable=True),
    ]


def _columns() -> set[str]:
    return {str(c["name"]) for c in sa.inspect(op.get_bind()).get_columns(TABLE)}


def _has_index() -> bool:
    return INDEX in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(TABLE)}


def upgrade() -> None:
    present = _columns()
    missing = [c for c in _new_columns() if c.name not in present]
    if missing:
        with op.batch_alter_table(TABLE) as batch:
            for column in missing:
                batch.add_column(column)
    if not _has_index():
        op.create_index(INDEX, TABLE, ["status", "expires_at"])


def downgrade() -> None:
    if _has_index():
        op.drop_index(INDEX, table_name=TABLE)
    present = [c.name for c in _new_columns() if c.name in _columns()]
    if present:
        with op.batch_alter_table(TABLE) as batch:
            for name in present:
                batch.drop_column(name)
