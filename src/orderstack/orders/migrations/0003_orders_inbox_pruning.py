"""index the inbox by age, for pruning past retention

Revision ID: orders_0003
Revises: orders_0002

The first migration builds the inbox from the code's table factory, which now has this
index: a database created since then has it already, an older one gets it here.
"""

import sqlalchemy as sa
from alembic import op

revision = "orders_0003"
down_revision = "orders_0002"
branch_labels = None
depends_on = None

TABLE, INDEX = "orders_inbox", "ix_orders_inbox_processed_at"


def _has_index() -> bool:
    return INDEX in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(TABLE)}


def upgrade() -> None:
    if not _has_index():
        op.create_index(INDEX, TABLE, ["processed_at"])


def downgrade() -> None:
    if _has_index():
        op.drop_index(INDEX, table_name=TABLE)
