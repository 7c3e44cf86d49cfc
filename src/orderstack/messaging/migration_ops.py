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
