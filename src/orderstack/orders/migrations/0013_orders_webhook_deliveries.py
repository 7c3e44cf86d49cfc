"""webhooks: deliveries, dead letters and paused hooks

Revision ID: orders_0013
Revises: orders_0012

``order_webhooks`` gains ``status`` ('active' or 'paused': a hook whose delivery failed for
the whole retry horizon is paused, its cursor kept), ``delivery_upto`` (the last event id of
the batch in flight: a retry sends the same batch, under the same ``webhook-id``) and
``failing_since`` (when that batch first failed; the retry horizon counts from it).

``order_webhook_deliveries`` (id BIGINT auto-increment, hook_id, after_id, upto_id, events,
status 'delivered' | 'dead' | 'replayed', attempts, last_error, created_at, settled_at): one
row per batch settled, for ``orderstack webhooks deliveries`` and ``replay``
(orders/webhooks.py).

ADD COLUMN with a constant default, CREATE TABLE and CREATE INDEX: nothing MySQL 8 lacks.
Each step checks first, so a run cut short can be run again.

Down: the table and the three columns go (a paused hook becomes active again).
"""

import sqlalchemy as sa
from alembic import op

from orderstack.storage.types import BigId, UtcDateTime

revision = "orders_0013"
down_revision = "orders_0012"
branch_labels = None
depends_on = None

HOOKS = "order_webhooks"
TABLE = "order_webhook_deliveries"
INDEXES = {
    "ix_order_webhook_deliveries_hook_id_id": ["hook_id", "id"],
    "ix_order_webhook_deliveries_status_id": ["status", "id"],
}


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("delivery_upto", sa.BigInteger, nullable=True),
        sa.Column("failing_since", UtcDateTime, nullable=True),
    ]


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def upgrade() -> None:
    present = {c["name"] for c in _inspector().get_columns(HOOKS)}
    for column in _columns():
        if column.name not in present:
            op.add_column(HOOKS, column)
    if TABLE not in _inspector().get_table_names():
        op.create_table(
            TABLE,
            sa.Column("id", BigId, primary_key=True, autoincrement=True),
            sa.Column("hook_id", sa.BigInteger, nullable=False),
            sa.Column("after_id", sa.BigInteger, nullable=False),
            sa.Column("upto_id", sa.BigInteger, nullable=False),
            sa.Column("events", sa.Integer, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("last_error", sa.String(255), nullable=True),
            sa.Column("created_at", UtcDateTime, nullable=False),
            sa.Column("settled_at", UtcDateTime, nullable=False),
        )
    existing = {i["name"] for i in _inspector().get_indexes(TABLE)}
    for name, columns in INDEXES.items():
        if name not in existing:
            op.create_index(name, TABLE, columns)


def downgrade() -> None:
    if TABLE in _inspector().get_table_names():
        op.drop_table(TABLE)
    present = {c["name"] for c in _inspector().get_columns(HOOKS)}
    for column in reversed(_columns()):
        if column.name in present:
            with op.batch_alter_table(HOOKS) as batch:
                batch.drop_column(column.name)
