"""reservations hold lines of several products, priced from the catalog

Revision ID: products_0007
Revises: products_0006

``reservation_lines`` (order_id, product_id, quantity, unit_price): the lines a confirmed
reservation holds, one per product (an order's lines for one product summed), at the unit
price of the row the stock was taken from. Every confirmed reservation from before this
step becomes one line (its product and quantity; no price: it was never priced).

``stock_reservations.product_id`` becomes nullable: NULL for an order of several lines.
``stock_reservations.refusal`` (TEXT, nullable): why a failed order took nothing (JSON), so
that a resent ``order.created`` is answered alike.

Plain CREATE TABLE, INSERT ... SELECT, ALTER TABLE MODIFY / ADD COLUMN: nothing MySQL 8
lacks; batch mode copies the table on SQLite. Each step checks first, so a run cut short
can be run again.

Down: refused while a reservation of several lines exists (the schema before it cannot
hold one: say so rather than lose what it holds); else the column and the table go.
"""

import sqlalchemy as sa
from alembic import op

from orderstack.storage.types import Money

revision = "products_0007"
down_revision = "products_0006"
branch_labels = None
depends_on = None

LINES = "reservation_lines"
RESERVATIONS = "stock_reservations"
INDEX = "ix_reservation_lines_product_id_order_id"


def _tables() -> set[str]:
    return set(sa.inspect(op.get_bind()).get_table_names())


def _columns(table: str) -> dict[str, dict[str, object]]:
    return {str(c["name"]): dict(c) for c in sa.inspect(op.get_bind()).get_columns(table)}


def _reservations() -> sa.TableClause:
    return sa.table(
        RESERVATIONS,
        sa.column("order_id"),
        sa.column("product_id"),
        sa.column("quantity"),
        sa.column("outcome"),
    )


def upgrade() -> None:
    if LINES not in _tables():
        op.create_table(
            LINES,
            sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("product_id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("quantity", sa.Integer, nullable=False),
            sa.Column("unit_price", Money, nullable=True),
        )
        op.create_index(INDEX, LINES, ["product_id", "order_id"])
        reservations = _reservations()
        lines = sa.table(
            LINES, sa.column("order_id"), sa.column("product_id"), sa.column("quantity")
        )
        op.execute(
            lines.insert().from_select(
                ["order_id", "product_id", "quantity"],
                sa.select(
                    reservations.c.order_id, reservations.c.product_id, reservations.c.quantity
                ).where(reservations.c.outcome == "confirmed"),
            )
        )
    columns = _columns(RESERVATIONS)
    with op.batch_alter_table(RESERVATIONS) as batch:
        if not columns["product_id"]["nullable"]:
            batch.alter_column("product_id", existing_type=sa.BigInteger, nullable=True)
        if "refusal" not in columns:
            batch.add_column(sa.Column("refusal", sa.Text, nullable=True))


def downgrade() -> None:
    bind = op.get_bind()
    reservations = _reservations()
    several = bind.scalar(sa.select(sa.func.count()).where(reservations.c.product_id.is_(None)))
    if several:
        raise RuntimeError(
            f"{several} reservations hold lines of several products, which the schema "
            "before products_0007 cannot hold; downgrade refused, nothing changed"
        )
    columns = _columns(RESERVATIONS)
    with op.batch_alter_table(RESERVATIONS) as batch:
        if "refusal" in columns:
            batch.drop_column("refusal")
        if columns["product_id"]["nullable"]:
            batch.alter_column("product_id", existing_type=sa.BigInteger, nullable=False)
    if LINES in _tables():
        op.drop_table(LINES)
