"""``orderstack webhooks list | deliveries [--dead] | replay (ID | --all)``: an operator's
view of the webhooks (orders/webhooks.py) in the configured database, as ``reconcile`` works
on it: no service needs to run. ``replay`` resumes a hook paused by a dead delivery, from
that delivery (the same batch under the same ``webhook-id``). What it prints comes from the
database (a URL, a receiver's error): cli.py escapes control characters in it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson
import sqlalchemy as sa

from orderstack.config import Settings
from orderstack.orders.webhooks import DEAD, Delivery, Webhook, deliveries_json, hooks_json
from orderstack.wire import MAX_ID

EXIT_UNUSABLE = 2


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hooks = commands.add_parser(
        "webhooks", help="list webhooks, their deliveries; replay dead ones"
    )
    sub = hooks.add_subparsers(dest="webhooks_command", required=True)
    listing = sub.add_parser("list", help="each hook: url, status, after_id, attempts, last_error")
    listing.add_argument("--json", action="store_true")
    deliveries = sub.add_parser("deliveries", help="the newest settled deliveries first")
    deliveries.add_argument("--dead", action="store_true", help="only the dead ones")
    deliveries.add_argument("--limit", type=_count, default=50)
    deliveries.add_argument("--json", action="store_true")
    replay = sub.add_parser("replay", help="resume the hooks of dead deliveries from them")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=_count, help="a dead delivery's id")
    which.add_argument("--all", action="store_true", help="every dead delivery")


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_ID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from orderstack.orders.repository import SqlWebhookStore
    from orderstack.storage.engine import create_engine

    url = settings.database_url
    if url.get_backend_name() == "sqlite" and not _is_file(url.database):
        # Opening it would create an empty database: there are no webhooks in it.
        print(f"orderstack webhooks: no SQLite database at {url.database!r}", file=sys.stderr)
        return EXIT_UNUSABLE
    engine = create_engine(url, pool_size=1, timeouts=settings.db_timeouts)
    store = SqlWebhookStore(engine)
    try:
        if args.webhooks_command == "list":
            hooks = await store.all()
            print(_json(hooks_json(hooks)) if args.json else render_hooks(hooks))
        elif args.webhooks_command == "deliveries":
            found = await store.deliveries(DEAD if args.dead else None, args.limit)
            print(_json(deliveries_json(found)) if args.json else render_deliveries(found))
        else:
            replayed = await store.replay(None if args.all else args.id)
            for d in replayed:
                print(f"replayed delivery {d.id} ({d.webhook_id}): hook {d.hook_id} resumed")
            if not replayed:
                print("nothing replayed: no such dead delivery (or its hook is gone)")
                return 1
    except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
        # Not the exception's text: it may carry the database URL (its password).
        print(
            f"orderstack webhooks: {type(exc).__name__}: the database is unreachable, or"
            " its tables are missing (orderstack migrate up)",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    finally:
        await engine.dispose()
    return 0


def _is_file(path: str | None) -> bool:
    return bool(path) and Path(path or "").is_file()


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def render_hooks(hooks: list[Webhook]) -> str:
    lines = [f"{'id':>6}  {'status':<7} {'after_id':>10} {'attempts':>8}  url  (last_error)"]
    for h in hooks:
        error = f"  ({h.last_error})" if h.last_error else ""
        lines.append(f"{h.id:>6}  {h.status:<7} {h.after_id:>10} {h.attempts:>8}  {h.url}{error}")
    return "\n".join(lines) if hooks else "no webhooks"


def render_deliveries(deliveries: list[Delivery]) -> str:
    lines = [
        f"{'id':>6}  {'status':<9} {'hook':>6} {'events':>6} {'attempts':>8}"
        "  webhook-id  (last_error)"
    ]
    for d in deliveries:
        error = f"  ({d.last_error})" if d.last_error else ""
        lines.append(
            f"{d.id:>6}  {d.status:<9} {d.hook_id:>6} {d.events:>6} {d.attempts:>8}"
            f"  {d.webhook_id}{error}"
        )
    return "\n".join(lines) if deliveries else "no deliveries"
