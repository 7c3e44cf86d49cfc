"""orders of several lines, priced from the catalog

Revision ID: orders_0008
Revises: orders_0007

An order of one line keeps it in its row, as every order did until now: each existing
order is a one-line order (its ``product_id`` and ``quantity``) with its ``total_price``;
nothing is copied. An order of several lines has ``product_id`` NULL, ``quantity`` its
units in all, and its lines in the new ``order_lines`` (order_id, line_no, product_id,
quantity, unit_price), found by product through ``ix_order_lines_product_id_order_id``.

``orders.total_price`` becomes nullable: an order sent without one is priced by the product
service and has none until then. New nullable columns: ``unit_price`` (a one-line order's,
from the catalog), ``agreed_total`` (the total its client agreed to, checked by the product
service) and ``failure`` (TEXT: why a failed order failed, JSON).

Plain CREATE TABLE, ALTER TABLE ADD COLUMN / MODIFY: nothing MySQL 8 lacks; batch mode
copies the table on SQLite. Each step checks first, so a run cut short can be run again.

Down: refused while an order of several lines, or one without a total, exists (the schema
before it cannot hold them: say so rather than lose them); else the columns and the table go.
"""

import sqlalchemy as sa
from alembic import op

from orderstack.storage.types import Money

revision = "orders_0008"
down_revision = "orders_0007"
branch_labels = None
depends_on = None

TABLE = "orders"
LINES = "order_lines"
INDEX = "ix_order_lines_product_id_order_id"
NEW_COLUMNS = ("unit_price", "agreed_total", "failure")


def _tables() -> set[str]:
    return set(sa.inspect(op.get_bind()).get_table_names())


def _columns() -> dict[str, dict[str, object]]:
    return {str(c["name"]): dict(c) for c in sa.inspect(op.get_bind()).get_columns(TABLE)}


def upgrade() -> None:
    if LINES not in _tables():
        op.create_table(
            LINES,
            sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("line_no", sa.SmallInteger, primary_key=True, autoincrement=False),
            sa.Column("product_id", sa.BigInteger, nullable=False),
            sa.Column("quantity", sa.Integer, nullable=False),
            sa.Column("unit_price", Money, nullable=True),
        )
        op.create_index(INDEX, LINES, ["product_id", "order_id"])
    columns = _columns()
    with op.batch_alter_table(TABLE) as batch:
        if not columns["product_id"]["nullable"]:
            batch.alter_column("product_id", existing_type=sa.BigInteger, nullable=True)
        if not columns["total_price"]["nullable"]:
            batch.alter_column("total_price", existing_type=Money, nullable=True)
        if "unit_price" not in columns:
            batch.add_column(sa.Column("unit_price", Money, nullable=True))
        if "agreed_total" not in columns:
            batch.add_column(sa.Column("agreed_total", Money, nullable=True))
        if "failure" not in columns:
            batch.add_column(sa.Column("failure", sa.Text, nullable=True))


def downgrade() -> None:
    bind = op.get_bind()
    table = sa.table(TABLE, sa.column("product_id"), sa.column("total_price"))
    blocking = bind.scalar(
        sa.select(sa.func.count()).where(
            sa.or_(table.c.product_id.is_(None), table.c.total_price.is_(None))
        )
    )
    if blocking:
        raise RuntimeError(
            f"{blocking} orders have several lines or no total, which the schema before "
            "orders_0008 cannot hold; downgrade refused, nothing changed"
        )
    columns = _columns()
    with op.batch_alter_table(TABLE) as batch:
        for column in NEW_COLUMNS:
            if column in columns:
                batch.drop_column(column)
        if columns["total_price"]["nullable"]:
            batch.alter_column("total_price", existing_type=Money, nullable=False)
        if columns["product_id"]["nullable"]:
            batch.alter_column("product_id", existing_type=sa.BigInteger, nullable=False)
    if LINES in _tables():
        op.drop_table(LINES)
