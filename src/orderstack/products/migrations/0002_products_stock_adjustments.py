"""version as BIGINT, index on updated_at, stock adjustments ledger

Revision ID: products_0002
Revises: products_0001

Every statement here exists on MySQL 8, MariaDB 10.6+, SQLite and PostgreSQL (no
RETURNING, no dialect-only functions). Products that exist at upgrade time get an
``opening balance`` adjustment (their current qty plus the units already confirmed to
orders), so the ledger is complete from then on: for every product, units confirmed to
orders = sum(adjustments) - qty.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from orderstack.storage.types import BigId, UtcDateTime

revision = "products_0002"
down_revision = "products_0001"
branch_labels = None
depends_on = None

OPENING_BALANCE = "opening balance"


def _set_version_type(old: sa.types.TypeEngine[int], new: sa.types.TypeEngine[int]) -> None:
    # SQLite stores every integer in up to 8 bytes whatever the declared type, so there is
    # nothing to change there (and altering a column would mean rebuilding the table).
    if op.get_bind().dialect.name == "sqlite":
        return
    op.alter_column("products", "version", existing_type=old, type_=new, existing_nullable=False)


def upgrade() -> None:
    _set_version_type(sa.Integer(), sa.BigInteger())
    op.create_index("ix_products_updated_at", "products", ["updated_at"])
    op.create_table(
        "stock_adjustments",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("product_id", sa.BigInteger, nullable=False),
        sa.Column("delta", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("qty_after", sa.BigInteger, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_stock_adjustments_product_id", "stock_adjustments", ["product_id"])

    products = sa.table("products", sa.column("id"), sa.column("qty"))
    reservations = sa.table("stock_reservations", sa.column("product_id"), sa.column("outcome"))
    adjustments = sa.table(
        "stock_adjustments",
        sa.column("product_id"),
        sa.column("delta"),
        sa.column("reason"),
        sa.column("qty_after"),
        sa.column("created_at", UtcDateTime),
    )
    confirmed = (
        sa.select(sa.func.count())
        .where(
            reservations.c.product_id == products.c.id,
            reservations.c.outcome == "confirmed",
        )
        .scalar_subquery()
    )
    now = sa.bindparam("now", datetime.now(UTC), type_=UtcDateTime)
    op.execute(
        adjustments.insert().from_select(
            ["product_id", "delta", "reason", "qty_after", "created_at"],
            sa.select(
                products.c.id,
                products.c.qty + confirmed,
                sa.literal(OPENING_BALANCE),
                products.c.qty,
                now,
            ),
        )
    )


def downgrade() -> None:
    op.drop_table("stock_adjustments")
    op.drop_index("ix_products_updated_at", table_name="products")
    _set_version_type(sa.BigInteger(), sa.Integer())
