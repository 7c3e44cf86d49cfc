"""``orderstack webhooks list | deliveries | replay`` (webhook_admin.py) on a SQLite file
migrated to head, through cli.main: a hook's status, cursor and error listed with control
characters escaped; a dead delivery shown, replayed by id (its hook active and due again),
not twice; ``--all``; no database, no file created."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from orderstack import cli
from orderstack.orders.repository import SqlWebhookStore
from orderstack.orders.webhooks import DEAD, DELIVERED, PAUSED, Delivery
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine
from orderstack.storage.types import utcnow


@pytest.fixture(autouse=True)
def _logging_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "configure_logging", lambda *_args: None)


async def _dead_hooks(path: Path, n: int) -> None:
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{path}"))
    await migrate.upgrade(engine, "orders")
    store = SqlWebhookStore(engine)
    now = utcnow()
    for i in range(n):
        hook = await store.add(f"http://hooks.test/\x1b[2J{i}", "s" * 20, None, 0)
        await store.begin(hook, 7)
        record = Delivery(0, hook.id, 0, 7, 3, DEAD, 40, "HTTP 500\x07", now, now)
        await store.settle(
            hook,
            after_id=0,
            attempts=40,
            next_attempt_at=None,
            error="HTTP 500\x07",
            delivery_upto=7,
            failing_since=now - timedelta(days=1),
            status=PAUSED,
            record=record,
        )
    await engine.dispose()


def test_list_deliveries_and_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "orders.db"
    asyncio.run(_dead_hooks(path, 2))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    assert cli.main(["webhooks", "list"]) == 0
    out = capsys.readouterr().out
    assert "paused" in out and "\\u001b[2J0" in out and "\x1b" not in out
    assert "HTTP 500\\u0007" in out and "\x07" not in out
    assert cli.main(["webhooks", "deliveries", "--dead"]) == 0
    out = capsys.readouterr().out
    assert "msg_1_7" in out and "msg_2_7" in out and "dead" in out
    assert cli.main(["webhooks", "replay", "1"]) == 0
    assert "hook 1 resumed" in capsys.readouterr().out
    assert cli.main(["webhooks", "replay", "1"]) == 1  # not twice
    capsys.readouterr()
    assert cli.main(["webhooks", "list", "--json"]) == 0
    listed = capsys.readouterr().out
    assert listed.count('"active"') == 1 and listed.count('"paused"') == 1
    assert cli.main(["webhooks", "replay", "--all"]) == 0
    assert "hook 2 resumed" in capsys.readouterr().out
    assert cli.main(["webhooks", "deliveries", "--dead"]) == 0
    assert "no deliveries" in capsys.readouterr().out


def test_no_database_exits_2_and_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "none.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    assert cli.main(["webhooks", "list"]) == 2
    assert "no SQLite database" in capsys.readouterr().err and not path.exists()


async def test_delivered_rows_are_pruned_to_about_the_newest_dead_ones_stay(
    tmp_path: Path,
) -> None:
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"))
    await migrate.upgrade(engine, "orders")
    store = SqlWebhookStore(engine, keep_delivered=30)
    now = utcnow()
    hook = await store.add("http://hooks.test/", "s" * 20, None, 0)
    dead_hook = await store.add("http://hooks.test/dead", "s" * 20, None, 0)
    await store.settle(
        dead_hook,
        after_id=0,
        attempts=9,
        next_attempt_at=None,
        error="HTTP 500",
        delivery_upto=1,
        status=PAUSED,
        record=Delivery(0, dead_hook.id, 0, 1, 1, DEAD, 9, "HTTP 500", now, now),
    )
    for upto in range(1, 251):
        await store.begin(hook, upto)
        record = Delivery(0, hook.id, upto - 1, upto, 1, DELIVERED, 1, None, now, now)
        assert await store.settle(
            hook, after_id=upto, attempts=0, next_attempt_at=None, error=None, record=record
        )
        [hook] = [h for h in await store.all() if h.id == hook.id]
    kept = await store.deliveries(None, 1000)
    delivered = [d for d in kept if d.status == DELIVERED]
    assert 30 <= len(delivered) < 30 + 100  # pruned every 100th, down to the newest 30
    assert delivered[0].upto_id == 250  # the newest stay
    assert [d.hook_id for d in kept if d.status == DEAD] == [dead_hook.id]  # never pruned
    await engine.dispose()
