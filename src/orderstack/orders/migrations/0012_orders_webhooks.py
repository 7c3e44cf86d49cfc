"""webhooks: order status changes posted to a URL

Revision ID: orders_0012
Revises: orders_0011

``order_webhooks`` (id BIGINT auto-increment, url, secret, customer_id, after_id, attempts,
next_attempt_at, last_error, created_at): a URL that is sent each status change of every
order (customer_id NULL) or of one customer's, from ``order_status_events`` (orders_0010),
in id order. ``after_id`` is the last event id the URL acknowledged; ``next_attempt_at``
both leases a hook to the replica delivering it and delays the next try after a failure
(orders/webhooks.py). Due hooks are found by ``ix_order_webhooks_next_attempt_at``.

Plain CREATE TABLE and CREATE INDEX: nothing MySQL 8 lacks. Each step checks first, so a
run cut short can be run again.

Down: the table goes (the hooks are forgotten; nothing else changes).
"""

import sqlalchemy as sa
from alembic import op

from orderstack.storage.types import BigId, UtcDateTime

revision = "orders_0012"
down_revision = "orders_0011"
branch_labels = None
depends_on = None

TABLE = "order_webhooks"
INDEX = "ix_order_webhooks_next_attempt_at"


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def upgrade() -> None:
    if TABLE not in _inspector().get_table_names():
        op.create_table(
            TABLE,
            sa.Column("id", BigId, primary_key=True, autoincrement=True),
            sa.Column("url", sa.String(2048), nullable=False),
            sa.Column("secret", sa.String(128), nullable=False),
            sa.Column("customer_id", sa.String(255), nullable=True),
            sa.Column("after_id", sa.BigInteger, nullable=False, server_default="0"),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sa.Column("next_attempt_at", UtcDateTime, nullable=True),
            sa.Column("last_error", sa.String(255), nullable=True),
            sa.Column("created_at", UtcDateTime, nullable=False),
        )
    if INDEX not in {i["name"] for i in _inspector().get_indexes(TABLE)}:
        op.create_index(INDEX, TABLE, ["next_attempt_at"])


def downgrade() -> None:
    if TABLE in _inspector().get_table_names():
        op.drop_table(TABLE)
