"""each order's status changes, in order

Revision ID: orders_0010
Revises: orders_0009

``order_status_events`` (id BIGINT auto-increment, order_id, status, customer_id, at): one
row per status an order entered (pending when it is placed, then confirmed, failed,
cancelled, or whatever a move writes), inserted in the transaction that changed the status
(orders/repository.py), so the history never says what the order table does not. The id is
the event id of the order-status streams (``GET /orders/events``, orders/events_stream.py):
a client resumes after the last one it saw. An order's events are read by
``ix_order_status_events_order_id_id`` (order_id, id), a customer's by
``ix_order_status_events_customer_id_id`` (customer_id, id); every stream reads by id.

Orders placed before this revision have no history: their next change is their first
event (nothing is backfilled: a large table would be copied in one statement).

Plain CREATE TABLE and CREATE INDEX: nothing MySQL 8 lacks. Each step checks first, so a
run cut short can be run again.

Down: the table goes (the history is lost; the orders keep their status).
"""

import sqlalchemy as sa
from alembic import op

from orderstack.storage.types import BigId, UtcDateTime

revision = "orders_0010"
down_revision = "orders_0009"
branch_labels = None
depends_on = None

TABLE = "order_status_events"
INDEXES = {
    "ix_order_status_events_order_id_id": ["order_id", "id"],
    "ix_order_status_events_customer_id_id": ["customer_id", "id"],
}


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def upgrade() -> None:
    if TABLE not in _inspector().get_table_names():
        op.create_table(
            TABLE,
            sa.Column("id", BigId, primary_key=True, autoincrement=True),
            sa.Column("order_id", sa.BigInteger, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("customer_id", sa.String(255), nullable=True),
            sa.Column("at", UtcDateTime, nullable=False),
        )
    present = {i["name"] for i in _inspector().get_indexes(TABLE)}
    for name, columns in INDEXES.items():
        if name not in present:
            op.create_index(name, TABLE, columns)


def downgrade() -> None:
    if TABLE in _inspector().get_table_names():
        op.drop_table(TABLE)
