"""DDL shared by both services' first migration: the outbox and inbox tables.

They are built from the same factories the code uses (messaging/outbox.py, inbox.py), so
there is one definition of their shape. A later change to those factories must come with a
new migration per service that alters the existing tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from orderstack.messaging.inbox import inbox_table
from orderstack.messaging.outbox import outbox_table


def create_outbox_and_inbox(prefix: str) -> None:
    metadata = sa.MetaData()
    outbox_table(metadata, prefix)
    inbox_table(metadata, prefix)
    metadata.create_all(op.get_bind())


def drop_outbox_and_inbox(prefix: str) -> None:
    op.drop_table(f"{prefix}_inbox")
    op.drop_table(f"{prefix}_outbox")


# The outbox's origin columns (messaging/outbox.py): the request id and the W3C
# traceparent of the request (or the consumed event) that wrote each row.
ORIGIN_COLUMNS = ("request_id", "traceparent")


def _outbox_columns(prefix: str) -> set[str]:
    return {str(c["name"]) for c in sa.inspect(op.get_bind()).get_columns(f"{prefix}_outbox")}


def add_outbox_origin_columns(prefix: str) -> None:
    """Add the nullable origin columns the outbox lacks (re-runnable; a database created
    from the current factories has them already)."""
    missing = [name for name in ORIGIN_COLUMNS if name not in _outbox_columns(prefix)]
    if missing:
        with op.batch_alter_table(f"{prefix}_outbox") as batch:
            for name in missing:
                batch.add_column(sa.Column(name, sa.String(128), nullable=True))


def drop_outbox_origin_columns(prefix: str) -> None:
    present = [name for name in ORIGIN_COLUMNS if name in _outbox_columns(prefix)]
    if present:
        with op.batch_alter_table(f"{prefix}_outbox") as batch:
            for name in present:
                batch.drop_column(name)
