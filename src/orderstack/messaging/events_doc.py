"""The tables of docs/CONTRACT.md#events, rendered from the event declarations.

``orderstack/events.py`` is the one place an event is written (its name, version, payload
models, publisher and consumers), and messaging/topology.py binds the queues from it. This
module turns both into the two tables of the contract's Events section (the events; the
queues and what they are bound to), each between its markers in the page:

    python -m orderstack.messaging.events_doc                       # the tables, on stdout
    python -m orderstack.messaging.events_doc docs/CONTRACT.md      # rewritten (`make docs`)

tests/unit/test_event_catalog.py fails when the committed page differs from it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic import BaseModel

from orderstack.events import EVENTS, EventType, Service
from orderstack.messaging.topology import QUEUES

EVENTS_MARK = "events-table"
QUEUES_MARK = "queues-table"
_SOURCE = "src/orderstack/events.py"


def _begin(mark: str) -> str:
    return (
        f"<!-- {mark}: generated from {_SOURCE} by `make docs` "
        "(python -m orderstack.messaging.events_doc); do not edit -->"
    )


def _end(mark: str) -> str:
    return f"<!-- /{mark} -->"


def _fields(model: type[BaseModel]) -> str:
    return "`{" + ", ".join(f'"{name}"' for name in model.model_fields) + "}`"


def _services(services: tuple[Service, ...]) -> str:
    return ", ".join(str(s) for s in services) or "nobody (a broadcast)"


def _event_row(event: EventType) -> str:
    payload = _fields(event.payload) + (f"; {event.note}" if event.note else "")
    cells = (
        f"`{event.name}`",
        str(event.version),
        str(event.publisher),
        _services(event.consumers),
        payload,
        event.requires,
    )
    return "| " + " | ".join(cells) + " |"


def events_table() -> str:
    head = (
        "| event | version | from | to | payload we publish | what consumers require |\n"
        "| --- | --- | --- | --- | --- | --- |"
    )
    return "\n".join([head, *(_event_row(event) for event in EVENTS)])


def queues_table() -> str:
    rows = [
        "| queue (durable) | bound to | consumer | dead-letter queue |",
        "| --- | --- | --- | --- |",
    ]
    for service, queue in QUEUES.items():
        keys = ", ".join(f"`{key}`" for key in queue.routing_keys)
        rows.append(f"| `{queue.name}` | {keys} | {service} | `{queue.dead_letter_queue}` |")
    return "\n".join(rows)


def render(page: str) -> str:
    """``page`` with the text between each pair of markers replaced by its table. A page
    without the markers is an error: the tables must live somewhere."""
    for mark, table in ((EVENTS_MARK, events_table()), (QUEUES_MARK, queues_table())):
        pattern = re.compile(
            re.escape(f"<!-- {mark}:") + r".*?-->\n.*?" + re.escape(_end(mark)), re.DOTALL
        )
        found = pattern.search(page)
        if found is None:
            raise ValueError(f"no {mark} markers in the page")
        section = f"{_begin(mark)}\n{table}\n{_end(mark)}"
        page = page[: found.start()] + section + page[found.end() :]
    return page


def main(argv: list[str]) -> int:
    if not argv:
        sys.stdout.write(events_table() + "\n\n" + queues_table() + "\n")
        return 0
    path = Path(argv[0])
    text = path.read_text(encoding="utf-8")
    rendered = render(text)
    if rendered != text:
        path.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
