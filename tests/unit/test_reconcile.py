"""`orderstack reconcile`'s pure part: the drift and its compensating entry, the findings of
a product's ledger, the table and the JSON, the exit status, the default pending window;
and the command's usage errors (exit 2) before any database is reached, or when none can
be (a missing SQLite file is not created, an unreachable server's URL is not echoed)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from orderstack import cli
from orderstack.config import load_settings
from orderstack.reconcile import (
    EXIT_CLEAN,
    EXIT_FINDINGS,
    KINDS,
    LINES_DIFFER,
    NEGATIVE_STOCK,
    STOCK_DRIFT,
    Finding,
    Fix,
    ProductLedger,
    Report,
    default_pending_window,
    ledger_findings,
    render_json,
    render_table,
)


@pytest.fixture(autouse=True)
def _logging_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main configures structlog for the process: on captured output, later tests
    would log to a closed file."""
    monkeypatch.setattr(cli, "configure_logging", lambda *_args: None)


def test_the_drift_is_the_stock_the_ledger_does_not_explain() -> None:
    surplus = ProductLedger(7, qty=12, ledger=15, held=6)
    assert (surplus.expected, surplus.drift, surplus.compensation) == (9, 3, 3)
    missing = ProductLedger(8, qty=4, ledger=10, held=2)
    assert (missing.expected, missing.drift) == (8, -4)
    # The compensating entry makes qty = (ledger + entry) - held hold again.
    for p in (surplus, missing):
        assert p.qty == p.ledger + p.compensation - p.held
    assert ProductLedger(9, qty=3, ledger=5, held=2).drift == 0


def test_a_products_findings_name_it_and_its_drift() -> None:
    found = ledger_findings(
        [
            ProductLedger(7, qty=12, ledger=15, held=6),
            ProductLedger(8, qty=5, ledger=5, held=0),
            ProductLedger(9, qty=-1, ledger=0, held=0, deleted=True),
        ]
    )
    assert [(f.kind, f.names) for f in found] == [
        (STOCK_DRIFT, "product 7"),
        (STOCK_DRIFT, "product 9"),
        (NEGATIVE_STOCK, "product 9"),
    ]
    assert found[0].detail == "qty 12, ledger 15 - held 6 = 9: drift +3 units"
    assert found[1].detail.endswith("(deleted product)")


def _report(**fields: object) -> Report:
    return Report(products_checked=3, orders_checked=4, pending_older_than=1800, **fields)  # type: ignore[arg-type]


def test_a_clean_report_says_so_and_exits_0() -> None:
    report = _report(counts=dict.fromkeys(KINDS, 0))
    assert report.clean and report.exit_status == EXIT_CLEAN
    table = render_table(report, limit=50)
    assert table.splitlines() == [
        "checked 3 products, 4 orders (pending window 1800 s)",
        "clean",
    ]
    body = orjson.loads(render_json(report, limit=50))
    assert body["clean"] is True and body["order_tables"] is True
    assert set(body["counts"]) == set(KINDS)


def test_without_order_tables_the_report_says_product_side_only() -> None:
    report = Report(products_checked=3, orders_checked=None, pending_older_than=60)
    assert "order tables absent: product side only" in render_table(report, limit=5)
    assert orjson.loads(render_json(report, limit=5))["order_tables"] is False


def test_findings_are_tabled_counted_and_limited_and_exit_1() -> None:
    ledgers = [ProductLedger(7, 12, 15, 6), ProductLedger(8, 4, 10, 2)]
    differ = [Finding(LINES_DIFFER, "order", i, "ordered …, reserved …") for i in (1, 2)]
    report = _report(
        ledgers=ledgers,
        counts={STOCK_DRIFT: 2, LINES_DIFFER: 3},
        examples=ledger_findings(ledgers) + differ,
    )
    assert not report.clean and report.exit_status == EXIT_FINDINGS
    lines = render_table(report, limit=2).splitlines()
    assert lines[1] == "KIND\tSUBJECT\tDETAIL"
    assert lines[2].startswith("stock_drift\tproduct 7\tqty 12")
    assert "lines_differ\torder 2\tordered …, reserved …" in lines
    assert "lines_differ: 3 (1 more not shown; --limit)" in lines
    assert "stock drift in all: +3 / -4 units" in lines
    body = orjson.loads(render_json(report, limit=1))
    assert body["stock"] == [
        {
            "product_id": 7,
            "qty": 12,
            "ledger": 15,
            "held": 6,
            "deleted": False,
            "expected": 9,
            "drift_units": 3,
        }
    ]
    assert body["findings"][-1] == {
        "kind": LINES_DIFFER,
        "subject": "order",
        "id": 2,
        "detail": "ordered …, reserved …",
    }


def test_a_fixed_drift_is_told_and_still_exits_1() -> None:
    ledgers = [ProductLedger(7, 12, 15, 6)]
    report = _report(
        ledgers=ledgers,
        counts={STOCK_DRIFT: 1, LINES_DIFFER: 1},
        examples=ledger_findings(ledgers),
        fixed=[Fix(7, 3, 12, 5)],
    )
    table = render_table(report, limit=50)
    assert "fixed product 7: ledger entry +3 (reason reconcile), qty 12 kept, version 5" in table
    assert table.endswith("1 other findings are reported, not fixed")
    assert report.exit_status == EXIT_FINDINGS


def test_the_default_pending_window_is_a_few_of_the_longest_resend_waits() -> None:
    settings = load_settings(ORDER_PENDING_RESEND_MAX_SECONDS=100)
    assert default_pending_window(settings) == 300


@pytest.mark.parametrize(
    "args",
    [
        ["--pending-older-than", "-1"],
        ["--pending-older-than", "soon"],
        ["--pending-older-than", "inf"],
        ["--limit", "0"],
        ["--what"],
    ],
)
def test_arguments_it_cannot_take_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["reconcile", *args])
    assert exc.value.code == 2


def test_a_missing_sqlite_database_exits_2_and_is_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "none.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    assert cli.main(["reconcile"]) == 2
    assert "no SQLite database" in capsys.readouterr().err
    assert not path.exists()


def test_an_unreachable_server_exits_2_without_echoing_its_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://root:hunter2@127.0.0.1:1/orderdb")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_SECONDS", "1")
    assert cli.main(["reconcile"]) == 2
    err = capsys.readouterr().err
    assert "database error" in err and "DATABASE_URL" in err and "hunter2" not in err


def test_tables_missing_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    assert cli.main(["reconcile"]) == 2
    assert "orderstack migrate up" in capsys.readouterr().err
