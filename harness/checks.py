"""The invariant checks of a chaos run, written once for every scenario (the servers',
the cluster's, the embedded default's): their names, how they are made from the
databases, the broker and the cache (harness/invariants.py), and how they are shown."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from decimal import Decimal

from harness.cancels import CancelResult
from harness.invariants import (
    Settlement,
    cancel_violations,
    ledger_violations,
    line_violations,
    several_lines_confirmed,
    stock_violations,
)
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE

# The names of the invariant checks, in the order the report lists them.
SETTLED = (
    "every accepted order exists and is confirmed, failed or cancelled (or, a hold, "
    "reserved or expired)"
)
NO_OVERSELL = (
    "no oversell, per product and line: units of confirmed and reserved orders' lines (orders "
    "row or order_lines) = units held by confirmed reservations' lines = units taken "
    "(opening - qty), stock >= 0"
)
LEDGER = (
    "stock ledger, per product: units held by confirmed reservations' lines (confirmed and "
    "reserved orders') = opening stock + adjustments - qty, stock >= 0"
)
LINES = (
    "order lines = reservation lines, order by order: a confirmed order holds every line's "
    "units at the catalog price and its total is theirs; a failed one took nothing (and "
    "none failed price_changed); a cancelled one holds nothing; each order stored as its shape"
)
SEVERAL_LINES = "orders of several lines were placed and confirmed (the run exercised them)"
OUTBOXES = "outboxes empty"
QUEUES = "work queues empty (no message ready or held unacknowledged)"
DEAD_LETTERS = "dead-letter queues hold exactly the malformed messages"
CACHE = "cache = database: product:{id} has the row's version and qty, tombstone if deleted"
CANCELS = (
    "cancels: answered 200 -> cancelled, 409 -> failed; each order's status = its stock "
    "reservation's outcome (a cancelled one holds no line: every line given back, once, "
    "as the ledger per product shows); the API's answers consistent"
)
CATALOGUE = "catalogue changes during the run applied (a delete, a stock adjustment)"
CLEAN_STOP = "SIGINT drains and exits 0 within the bound"
FOREIGN_PRODUCTS = "database reset: GET /products/{id} never answered the other database's product"


def classify_stock(violations: list[str]) -> tuple[list[str], list[str]]:
    """stock_violations' findings split into (settlement, oversell) ones."""
    settled = [v for v in violations if "accepted orders" in v or "accepted order" in v]
    return settled, [v for v in violations if v not in settled]


def render_checks(checks: Mapping[str, list[str]]) -> list[str]:
    lines = ["invariants: " + ("all hold" if not any(checks.values()) else "VIOLATED")]
    for name, problems in checks.items():
        lines.append(f"  {'ok  ' if not problems else 'FAIL'}  {name}")
        lines.extend(f"          - {p}" for p in problems[:20])
        if len(problems) > 20:
            lines.append(f"          ... and {len(problems) - 20} more")
    return lines


def flatten(checks: Mapping[str, list[str]]) -> list[str]:
    return [f"{name}: {problem}" for name, problems in checks.items() for problem in problems]


def require_loopback(*hosts: str) -> None:
    """Faults stop servers, kill their connections and lock their tables: only ever on
    this machine."""
    for host in hosts:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
            raise SystemExit(f"chaos refuses to inject faults into {host}: not a loopback address")


async def invariant_checks(
    database_url: str,
    initial_stock: Mapping[int, int],
    accepted: Iterable[int],
    state: Settlement,
    cancels: CancelResult,
    *,
    pending_note: str = "",
    malformed_injected: int | None = None,
    cache_mismatches: list[str] | None = None,
    catalogue_problems: list[str] | None = None,
    prices: Mapping[int, Decimal] | None = None,
    several_lines: bool = False,
) -> dict[str, list[str]]:
    """Every invariant of a run, once it has settled (``state``: wait_settled's last look).

    ``malformed_injected`` is given on a run with a broker (the queues and dead-letter
    queues are then checked from ``state.queue_depths``: every queue of the topology
    must be there); ``cache_mismatches`` and ``catalogue_problems`` when the run had a
    shared cache and changed its catalogue. The cancels are checked only when some were
    made (a run with ``--cancel-fraction 0`` has nothing to check there). ``prices``: the
    catalog prices of the products ordered (each reserved line's price is checked against
    them); ``several_lines``: the load placed orders of several lines, so none confirmed is a
    finding (a run whose orders of several lines all failed checked nothing of them)."""
    accepted = list(accepted)
    settled, oversell = classify_stock(
        await stock_violations(database_url, initial_stock, accepted)
    )
    if state.pending:
        settled.append(f"{state.pending} orders still pending{pending_note}")
    checks: dict[str, list[str]] = {
        SETTLED: settled,
        NO_OVERSELL: oversell,
        LEDGER: await ledger_violations(database_url),
        LINES: await line_violations(database_url, accepted, prices),
        OUTBOXES: (
            [f"{state.unsent_events} events stuck in the outboxes"] if state.unsent_events else []
        ),
    }
    if malformed_injected is not None:
        if not state.queue_depths:
            checks[QUEUES] = ["the queues were not looked at"]
        else:
            work_left = {
                k: v for k, v in state.queue_depths.items() if not k.endswith(".dlq") and v
            }
            checks[QUEUES] = [f"messages left unprocessed: {work_left}"] if work_left else []
            dead = {k: v for k, v in state.queue_depths.items() if k.endswith(".dlq")}
            expected = {PRODUCT_SERVICE_QUEUE.dead_letter_queue: malformed_injected}
            unexpected = {k: v for k, v in dead.items() if v != expected.get(k, 0)}
            checks[DEAD_LETTERS] = (
                [f"dead-letter queues hold {unexpected}, expected {expected}"] if unexpected else []
            )
    if several_lines:
        checks[SEVERAL_LINES] = await several_lines_confirmed(database_url, accepted)
    if cancels.orders:
        checks[CANCELS] = cancels.problems + await cancel_violations(
            database_url, accepted, cancels.cancelled, cancels.refused
        )
    if cache_mismatches is not None:
        checks[CACHE] = cache_mismatches
    if catalogue_problems is not None:
        checks[CATALOGUE] = catalogue_problems
    return checks
