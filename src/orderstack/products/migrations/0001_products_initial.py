"""products, stock reservations, outbox and inbox

Revision ID: products_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from orderstack.messaging.migration_ops import create_outbox_and_inbox, drop_outbox_and_inbox
from orderstack.storage.types import BigId, Money, UtcDateTime

revision = "products_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("price", Money, nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("deleted_at", UtcDateTime, nullable=True),
        sa.CheckConstraint("qty >= 0", name="ck_products_qty_not_negative"),
    )
    op.create_table(
        "stock_reservations",
        sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("product_id", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_stock_reservations_product_id", "stock_reservations", ["product_id"])
    create_outbox_and_inbox("products")


def downgrade() -> None:
    drop_outbox_and_inbox("products")
    op.drop_table("stock_reservations")
    op.drop_table("products")
