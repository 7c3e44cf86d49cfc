"""``orderstack``: dev | serve order|product | migrate up|down N | cache warmup IDS... |
dlq list|show|replay|purge | migrate-queues | reconcile [--fix] [--json] |
token SUBJECT --role customer|staff|admin [--ttl SECONDS] |
webhooks list|deliveries [--dead]|replay ID|--all"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO, cast

import orjson

from orderstack import dlq, reconcile, webhook_admin
from orderstack.config import ConfigError, Settings, load_settings
from orderstack.logging import configure_logging
from orderstack.web.auth import Role, mint
from orderstack.wire import MAX_ID

SERVICES = {"order": "orders", "product": "products"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orderstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dev", help="both services in one process (embedded default)")
    serve = commands.add_parser("serve", help="one service alone (needs RABBITMQ_URL)")
    serve.add_argument("service", choices=sorted(SERVICES))
    migrate = commands.add_parser("migrate", help="apply or roll back migrations")
    migrate.add_argument("direction", choices=["up", "down"])
    migrate.add_argument(
        "steps", nargs="?", type=_positive, default=1, help="for down: how many (1 or more)"
    )
    migrate.add_argument("--service", choices=["order", "product", "all"], default="all")
    cache = commands.add_parser("cache", help="cache operations")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    warmup = cache_commands.add_parser("warmup", help="cache these products")
    warmup.add_argument("ids", nargs="+", type=_product_id)
    dlq.add_parser(commands)
    commands.add_parser(
        "migrate-queues",
        help="give the existing RabbitMQ queues the type QUEUE_TYPE asks for, keeping their "
        "messages (run it with the services stopped)",
    )
    reconcile.add_parser(commands)
    webhook_admin.add_parser(commands)
    token = commands.add_parser(
        "token",
        help="print a bearer token for SUBJECT, signed with AUTH_SIGNING_KEY",
        description="Print a JWT for SUBJECT with ROLE, of AUTH_ISSUER and AUTH_AUDIENCE, "
        'signed with the first AUTH_SIGNING_KEY: `curl -H "Authorization: Bearer $(orderstack '
        'token alice --role customer)" ...`',
    )
    token.add_argument("subject", type=_subject, help="who the token is for (its `sub`)")
    token.add_argument("--role", required=True, choices=[r.claim for r in Role])
    token.add_argument(
        "--ttl", type=_positive, default=3600, help="seconds it stays valid (default 3600)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("dev", "serve"):
        return _main(parser, args)
    with _terminal_safe_output():  # what it prints may come from the database or a message
        return _main(parser, args)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "dlq":
        dlq.check_args(parser, args)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"orderstack: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    try:
        if args.command in ("dev", "serve"):
            return _run_servers(settings, args)
        elif args.command == "migrate":
            asyncio.run(_migrate(settings, args.direction, args.steps, args.service))
        elif args.command == "cache":
            from orderstack.bootstrap import warm_cache

            print(orjson.dumps(asyncio.run(warm_cache(settings, args.ids))).decode())
        elif args.command == "dlq":
            return asyncio.run(dlq.run(settings, args))
        elif args.command == "migrate-queues":
            return asyncio.run(_migrate_queues(settings))
        elif args.command == "reconcile":
            return asyncio.run(reconcile.run(settings, args))
        elif args.command == "webhooks":
            return asyncio.run(webhook_admin.run(settings, args))
        elif args.command == "token":
            if not settings.signing_keys:
                raise ConfigError("AUTH_SIGNING_KEY is not set: there is no key to sign with")
            print(mint(settings, args.subject, Role[args.role.upper()], ttl=args.ttl))
    except ConfigError as exc:
        print(f"orderstack: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.command not in ONE_SHOT_COMMANDS:
            raise
        # An operator's command that cannot be done (database or broker unreachable, the
        # product service down, no such revision): one line saying why, not a traceback.
        print(f"orderstack {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


# Commands that do one thing and end; their failures are reported in one line (exit 1).
ONE_SHOT_COMMANDS = ("migrate", "cache", "migrate-queues")


@contextmanager
def _terminal_safe_output() -> Iterator[None]:
    """stdout and stderr with every control or format character but newline and tab
    written as a ``\\uXXXX`` escape, for as long as the block runs: a product name, an order
    status, a message or a server's error text a command prints cannot move the cursor,
    recolour, retitle or hide what the terminal shows. The escape is JSON's own, so
    ``--json`` output stays valid JSON and decodes to the same text."""
    saved = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, _TerminalSafe(saved[0]))
    sys.stderr = cast(TextIO, _TerminalSafe(saved[1]))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


class _TerminalSafe:
    """A text stream that writes to ``stream`` with control and format characters escaped
    (``terminal_safe``); anything else (``buffer``, ``fileno``, ``isatty``) is the stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(terminal_safe(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def terminal_safe(text: str) -> str:
    """``text`` with each character that is not printable (control, format, separator other
    than the space, private use, unassigned), newline and tab excepted, as ``\\uXXXX`` (a
    UTF-16 surrogate pair beyond the BMP, as JSON writes it)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch in "\n\t":
            out.append(ch)
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            high, low = divmod(ord(ch) - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
    return "".join(out)


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def _subject(text: str) -> str:
    if not 0 < len(text) <= 255 or not text.isprintable():
        raise argparse.ArgumentTypeError("a subject is 1 to 255 printable characters")
    return text


def _product_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_ID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a product id (1 to {MAX_ID})")
    return int(text)


def _run_servers(settings: Settings, args: argparse.Namespace) -> int:
    """``dev`` or ``serve``, until stopped (0). An address that cannot be listened on is
    found before anything has started: one line saying which and why, exit 1."""
    from orderstack import bootstrap
    from orderstack.serving import CannotListen

    try:
        if args.command == "dev":
            bootstrap.run_dev(settings)
        else:
            bootstrap.serve_one(settings, args.service)
    except CannotListen as exc:
        command = "dev" if args.command == "dev" else f"serve {args.service}"
        print(f"orderstack {command}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _migrate(settings: Settings, direction: str, steps: int, service: str) -> None:
    from orderstack.storage import migrate
    from orderstack.storage.engine import create_engine

    engine = create_engine(settings.database_url, pool_size=1, timeouts=settings.db_timeouts)
    names = list(SERVICES.values()) if service == "all" else [SERVICES[service]]
    try:
        for name in names:
            if direction == "up":
                await migrate.upgrade(engine, name)  # type: ignore[arg-type]
            else:
                await migrate.downgrade(engine, name, steps)  # type: ignore[arg-type]
            print(f"{name}: migrated {direction}")
    finally:
        await engine.dispose()


async def _migrate_queues(settings: Settings) -> int:
    from orderstack.messaging.queue_migration import QueueInUse, connect_first, migrate_queues
    from orderstack.messaging.rabbitmq import amqp_urls

    if not settings.amqp_url:
        raise ConfigError("RABBITMQ_URL is not set: migrate-queues works on a broker")
    connection = await connect_first(amqp_urls(settings.amqp_url))
    try:
        print(f"queues to {settings.QUEUE_TYPE} (QUEUE_TYPE):")
        await migrate_queues(connection, settings.QUEUE_TYPE, lambda line: print(f"  {line}"))
    except QueueInUse as exc:
        print(f"orderstack: {exc}", file=sys.stderr)
        return 1
    finally:
        await connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
