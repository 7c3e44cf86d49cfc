"""the product database's epoch, the identity its cache entries carry

Revision ID: products_0006
Revises: products_0005

``products_epoch``: one row (``id`` 1) holding ``epoch``, 32 random hex digits made when
this step runs. Every ``product:{id}`` entry carries the epoch of the database it was read
from, and readers serve only entries of their database's epoch (cache/port.py): a fresh
database (a new one, or ``migrate down`` to base and up again) has a fresh epoch, so the
entries an earlier database left in the cache are never served for its rows.

Plain CREATE TABLE and INSERT: the same on MariaDB, MySQL 8, PostgreSQL and SQLite.

Down: the table is dropped (a later upgrade makes a new epoch).
"""

import uuid

import sqlalchemy as sa
from alembic import op

from orderstack.storage.types import UtcDateTime, utcnow

revision = "products_0006"
down_revision = "products_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "products_epoch",
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.String(32), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "epoch": uuid.uuid4().hex, "created_at": utcnow()}])


def downgrade() -> None:
    op.drop_table("products_epoch")
