"""orders, outbox and inbox

Revision ID: orders_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from orderstack.messaging.migration_ops import create_outbox_and_inbox, drop_outbox_and_inbox
from orderstack.storage.types import BigId, Money, UtcDateTime

revision = "orders_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("product_id", sa.BigInteger, nullable=False),
        sa.Column("total_price", Money, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True, unique=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_orders_product_id_id", "orders", ["product_id", "id"])
    create_outbox_and_inbox("orders")


def downgrade() -> None:
    drop_outbox_and_inbox("orders")
    op.drop_table("orders")
