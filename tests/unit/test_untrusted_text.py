"""Text from outside never reaches a log line, a terminal or an error message unchecked:
a message's request id and traceparent are validated like the HTTP header, ``orderstack dlq``
escapes control and format characters, and SQL parameters stay out of error messages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from orderstack import dlq
from orderstack.messaging.bus import DeadLetter
from orderstack.messaging.envelope import decode
from orderstack.storage.engine import create_engine

BODY = b'{"pattern": "order.created", "data": {"orderId": 1, "productId": 2}}'
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    "request_id",
    ["abc\r\nX-Injected: 1", "tab\tseparated", "space inside", "\x1b[31mred", "é" * 3, "x" * 129],
)
def test_a_message_request_id_that_the_http_header_would_refuse_is_dropped(
    request_id: str,
) -> None:
    for value in (request_id, request_id.encode()):
        event = decode(BODY, message_id="m", routing_key=None, headers={"x-request-id": value})
        assert event.request_id is None


def test_a_valid_message_request_id_and_traceparent_are_kept() -> None:
    headers = {"x-request-id": "req-42_abc", "traceparent": TRACEPARENT}
    event = decode(BODY, message_id="m", routing_key=None, headers=headers)
    assert (event.request_id, event.traceparent) == ("req-42_abc", TRACEPARENT)


@pytest.mark.parametrize(
    "traceparent", [TRACEPARENT + "\n", TRACEPARENT.upper(), "00-zz", TRACEPARENT[:-1]]
)
def test_a_traceparent_not_in_the_w3c_form_is_dropped(traceparent: str) -> None:
    event = decode(BODY, message_id="m", routing_key=None, headers={"traceparent": traceparent})
    assert event.traceparent is None


class Letters:
    """A dead-letter admin holding one hostile dead letter."""

    def __init__(self, letter: DeadLetter) -> None:
        self.letter = letter

    async def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        return [self.letter] if queue == self.letter.queue else []

    async def replay(self, queue: str, ids: Sequence[str] | None) -> int:
        raise AssertionError("not used")

    async def purge(self, queue: str, ids: Sequence[str] | None) -> int:
        raise AssertionError("not used")


HOSTILE = DeadLetter(
    queue="product-service.events",
    message_id="id\x1b]0;owned\x07",
    routing_key="order.created\u202e",
    body=b"\x1b[2J\x1b[31mnot json\x00\xe2\x80\x8b",
    reason="bad\x1b[1Areason\r",
)


@pytest.mark.parametrize("command", ["show", "list"])
async def test_dlq_output_escapes_control_and_format_characters(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = Letters(HOSTILE)
    if command == "show":
        code = await dlq._show(admin, [HOSTILE.queue], HOSTILE.message_id or "")
    else:
        code = await dlq._list(admin, [HOSTILE.queue], 10)
    out = capsys.readouterr().out
    assert code == dlq.EXIT_OK
    assert not any(ch in out for ch in "\x1b\x07\x00\r\u202e\u200b")
    assert "\\x1b" in out and "\\u202e" in out  # shown, escaped
    if command == "show":
        assert "not json" in out and "\\u200b" in out


async def test_sql_parameters_stay_out_of_error_messages(tmp_path: Path) -> None:
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path}/p.db"))
    table = sa.Table("t", sa.MetaData(), sa.Column("k", sa.String(20), primary_key=True))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
            await conn.execute(table.insert().values(k="SECRET-KEY-42"))
        with pytest.raises(sa.exc.IntegrityError) as raised:
            async with engine.begin() as conn:
                await conn.execute(table.insert().values(k="SECRET-KEY-42"))
        assert "SECRET-KEY-42" not in str(raised.value)
    finally:
        await engine.dispose()
