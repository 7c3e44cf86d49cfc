"""product events remember the request that wrote them

Revision ID: products_0005
Revises: products_0004

``products_outbox.request_id`` and ``products_outbox.traceparent`` (nullable): the
``X-Request-ID`` of the request that wrote the event (for an answer, of the request that
created the order, copied from its ``order.created``) and its W3C ``traceparent`` when
tracing is on; the relay sends both as AMQP headers (``x-request-id``, ``traceparent``).
Rows written before this step have neither.

Each column is added only when missing, so the step can be run again after a run cut
short (and a database whose outbox was created with them is left alone).

Down: the columns are dropped.
"""

from orderstack.messaging.migration_ops import (
    add_outbox_origin_columns,
    drop_outbox_origin_columns,
)

revision = "products_0005"
down_revision = "products_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_outbox_origin_columns("products")


def downgrade() -> None:
    drop_outbox_origin_columns("products")
