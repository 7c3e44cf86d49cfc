"""index the inbox by age, for pruning past retention

Revision ID: products_0003
Revises: products_0002

The first migration builds the inbox from the code's table factory, which now has this
index: a database created since then has it already, an older one gets it here.
"""

import sqlalchemy as sa
from alembic import op

revision = "products_0003"
down_revision = "products_0002"
branch_labels = None
depends_on = None

TABLE, INDEX = "products_inbox", "ix_products_inbox_processed_at"


def _has_index() -> bool:
    return INDEX in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(TABLE)}


def upgrade() -> None:
    if not _has_index():
        op.create_index(INDEX, TABLE, ["processed_at"])


def downgrade() -> None:
    if _has_index():
        op.drop_index(INDEX, table_name=TABLE)
