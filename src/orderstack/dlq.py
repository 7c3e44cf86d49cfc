"""``orderstack dlq list|show|replay|purge``: inspect and re-drive dead-lettered messages.

It works on the bus the settings give: RabbitMQ when ``RABBITMQ_URL`` is set, otherwise
the embedded default's bus (the one ``orderstack dev`` runs on), through the same
dead-letter admin port (messaging/bus.py ``DeadLetterAdmin``). Replay publishes with the
original routing key and ``message_id``, so a message that was in fact processed is still
recognised by the consumer's inbox (within INBOX_RETENTION_SECONDS), and as the broker
user of RABBITMQ_URL: the consumer believes a replayed event only when that is the user
of the service that publishes it (run it with the publishing service's RABBITMQ_URL;
docs/security.md), so a replay never turns a forged letter into a believed one.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Sequence

import orjson

from orderstack.config import Settings
from orderstack.messaging.bus import DeadLetter, DeadLetterAdmin
from orderstack.messaging.topology import ALL_QUEUES

QUEUES = tuple(spec.name for spec in ALL_QUEUES)
# How far `show` looks into each dead-letter queue for the id it is given.
SHOW_SCAN_LIMIT = 10_000

EXIT_OK, EXIT_NOT_FOUND, EXIT_UNUSABLE = 0, 1, 2


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="inspect and re-drive dead-lettered messages")
    sub = dlq.add_subparsers(dest="dlq_command", required=True)
    queue_help = "a consuming queue (default: both)"

    listing = sub.add_parser("list", help="dead letters, oldest first; they stay in place")
    listing.add_argument("--queue", choices=QUEUES, help=queue_help)
    listing.add_argument("--limit", type=int, default=50, help="per queue (default 50)")

    show = sub.add_parser("show", help="one dead letter: reason, routing key, body")
    show.add_argument("message_id", metavar="MESSAGE_ID")
    show.add_argument("--queue", choices=QUEUES, help=queue_help)

    replay = sub.add_parser(
        "replay", help="publish again with the original routing key and message_id"
    )
    purge = sub.add_parser("purge", help="delete dead letters for good")
    for command in (replay, purge):
        command.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
        command.add_argument("--all", action="store_true", help="every dead letter of the queue")
        command.add_argument("--queue", choices=QUEUES, help=queue_help)
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """MESSAGE_ID... and --all exclude each other, and one of them is required."""
    if args.dlq_command in ("replay", "purge") and bool(args.message_ids) == bool(args.all):
        parser.error(f"dlq {args.dlq_command}: give MESSAGE_ID... or --all (not both)")
    if args.dlq_command == "list" and args.limit < 1:
        parser.error("dlq list: --limit must be at least 1")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one ``dlq`` command; return the exit status."""
    if args.dlq_command == "purge" and not args.yes and not _confirmed(args):
        return EXIT_UNUSABLE
    from orderstack.infrastructure import bus_from_settings

    bus = bus_from_settings(settings, both_services=True)  # the bus orderstack dev runs on
    try:
        try:
            await bus.start()
        except Exception as exc:
            # The exception's text may hold the URL; say which setting to check instead.
            where = "RABBITMQ_URL" if settings.amqp_url else "the embedded bus"
            print(f"orderstack: cannot reach {where} ({type(exc).__name__})", file=sys.stderr)
            return EXIT_UNUSABLE
        if not isinstance(bus, DeadLetterAdmin):
            print(
                f"orderstack: the {type(bus).__name__} bus cannot list or replay dead letters "
                "yet; set RABBITMQ_URL to work on RabbitMQ's dead-letter queues",
                file=sys.stderr,
            )
            return EXIT_UNUSABLE
        queues = [args.queue] if args.queue else list(QUEUES)
        command = args.dlq_command
        if command == "list":
            return await _list(bus, queues, args.limit)
        if command == "show":
            return await _show(bus, queues, args.message_id)
        ids = None if args.all else list(dict.fromkeys(args.message_ids))
        return await _settle(bus, queues, ids, replay=command == "replay")
    finally:
        await bus.close()


def _confirmed(args: argparse.Namespace) -> bool:
    what = "every dead letter" if args.all else f"{len(args.message_ids)} dead letter(s)"
    where = args.queue or " and ".join(QUEUES)
    if not sys.stdin.isatty():
        print("orderstack: dlq purge deletes for good: add --yes to confirm", file=sys.stderr)
        return False
    answer = input(f"Delete {what} of {where} for good? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def _list(admin: DeadLetterAdmin, queues: Sequence[str], limit: int) -> int:
    letters = [d for queue in queues for d in await admin.dead_letters(queue, limit)]
    if not letters:
        print("no dead letters")
        return EXIT_OK
    print("\t".join(("QUEUE", "MESSAGE_ID", "ROUTING_KEY", "BYTES", "REASON")))
    for d in letters:
        print(
            "\t".join(
                (
                    _printable(d.queue),
                    _printable(d.message_id or "-"),
                    _printable(d.routing_key or "-"),
                    str(len(d.body)),
                    _printable(_one_line(d.reason or "-")),
                )
            )
        )
    return EXIT_OK


async def _show(admin: DeadLetterAdmin, queues: Sequence[str], message_id: str) -> int:
    for queue in queues:
        for d in await admin.dead_letters(queue, SHOW_SCAN_LIMIT):
            if d.message_id == message_id:
                print(_describe(d))
                return EXIT_OK
    print(
        f"orderstack: no dead letter {_printable(repr(message_id))} in {', '.join(queues)}",
        file=sys.stderr,
    )
    return EXIT_NOT_FOUND


async def _settle(
    admin: DeadLetterAdmin, queues: Sequence[str], ids: list[str] | None, *, replay: bool
) -> int:
    verb = "replayed" if replay else "purged"
    total = 0
    for queue in queues:
        count = await (admin.replay(queue, ids) if replay else admin.purge(queue, ids))
        print(f"{queue}: {verb} {count}")
        total += count
    if ids is not None and total < len(ids):
        print(
            f"orderstack: {len(ids) - total} of {len(ids)} message id(s) not found",
            file=sys.stderr,
        )
        return EXIT_NOT_FOUND
    return EXIT_OK


def _describe(d: DeadLetter) -> str:
    return "\n".join(
        (
            f"queue:       {_printable(d.queue)}",
            f"message_id:  {_printable(d.message_id or '-')}",
            f"routing_key: {_printable(d.routing_key or '-')}",
            f"reason:      {_printable(d.reason or '-')}",
            f"published by broker user: {_printable(d.user_id or '-')}",
            f"body ({len(d.body)} bytes):",
            _printable(_pretty(d.body), keep_newlines=True),
        )
    )


def _pretty(body: bytes) -> str:
    try:
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "backslashreplace")


def _printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` safe to print on a terminal: control characters (escape sequences among
    them), DEL, and format characters (bidirectional overrides, zero-width marks) written
    as ``\\xNN`` / ``\\uNNNN`` escapes; a message body cannot move the cursor, recolour
    or hide what is shown."""
    out = []
    for ch in text:
        if (
            keep_newlines
            and ch == "\n"
            or ch.isprintable()
            and unicodedata.category(ch) != "Cf"
            or ch == " "
        ):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def _one_line(text: str, width: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
