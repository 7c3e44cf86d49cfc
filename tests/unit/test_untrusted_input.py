"""The server-free side of tests/e2e/test_untrusted_input.py: how a ``Host`` header is read
and matched (web/hosts.py), the settings that configure it, SQL parameters at DEBUG, and
a command's output on a terminal (cli.py)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from orderstack import cli
from orderstack.config import LOCAL_HOSTS, ConfigError, load_settings
from orderstack.reconcile import EXIT_FINDINGS
from orderstack.storage.engine import create_engine
from orderstack.web.hosts import HostCheck, _host
from tests.unit.embedded_apps import running_apps

LOCAL = HostCheck(None, patterns=LOCAL_HOSTS.split(","), style="seed")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8080",
        "LocalHost.:3000",
        "127.0.0.1",
        "127.0.0.1:8080",
        "[::1]",
        "[::1]:8080",
    ],
)
def test_this_machines_names_with_any_port_are_allowed(host: str) -> None:
    assert LOCAL.allows(_host({"headers": [(b"host", host.encode())]}))


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "localhost.evil.example",  # a rebinding name that starts like one of ours
        "127.0.0.1.nip.io",
        "evil.example:8080",
        "[::1",
        "localhost:80:80",
        "localhost:eighty",
        "",
        "loc\xe9lhost",
    ],
)
def test_any_other_host_is_refused(host: str) -> None:
    assert not LOCAL.allows(_host({"headers": [(b"host", host.encode("latin-1"))]}))


def test_no_host_header_or_two_are_refused() -> None:
    assert not LOCAL.allows(_host({"headers": []}))
    assert not LOCAL.allows(_host({"headers": [(b"host", b"localhost")] * 2}))


def test_a_subdomain_pattern_takes_its_subdomains_only() -> None:
    check = HostCheck(None, patterns=["*.example.com"], style="nest")  # type: ignore[arg-type]
    assert check.allows("api.example.com") and check.allows("a.b.example.com")
    assert not check.allows("example.com") and not check.allows("evilexample.com")


def test_allowed_hosts_and_public_base_url_are_checked_at_start() -> None:
    settings = load_settings(ALLOWED_HOSTS="API.example.com, *.example.org,::1")
    assert settings.allowed_hosts == ("api.example.com", "*.example.org", "[::1]")
    assert load_settings(ALLOWED_HOSTS="*").allowed_hosts is None
    assert load_settings().allowed_hosts is None  # serve: any host unless configured
    for wrong in ("http://api.example.com", "api.example.com:443", "a b", ","):
        with pytest.raises(ConfigError, match="ALLOWED_HOSTS"):
            load_settings(ALLOWED_HOSTS=wrong)
    assert load_settings(PUBLIC_BASE_URL="https://api.example.com/").PUBLIC_BASE_URL == (
        "https://api.example.com"
    )
    for wrong in ("api.example.com", "https://u:p@api.example.com", "https://a.example/?q=1"):
        with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
            load_settings(PUBLIC_BASE_URL=wrong)


PARAMETER = "S3CRET-PARAMETER-7f3a"


async def test_sql_parameters_stay_out_of_debug_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's statement log and the driver's own DEBUG lines (aiosqlite logged every
    call with its parameters) at DEBUG: the statement is there, its parameter is not."""
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    caplog.set_level(logging.DEBUG)  # last: it sets the capturing handler's level too
    # Another test's alembic run may have disabled the loggers that existed then.
    monkeypatch.setattr(logging.getLogger("sqlalchemy.engine.Engine"), "disabled", False)
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path}/logs.db"))
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("SELECT :secret AS secret"), {"secret": PARAMETER})
    finally:
        await engine.dispose()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "SELECT ? AS secret" in logged
    assert PARAMETER not in logged


HOSTILE_STATUS = "\x1b]0;owned\x07\x1b[2Jpaid\u202e"


def test_reconcile_prints_what_the_database_holds_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An order status written straight into the database, with a terminal escape, a bell
    and a bidi override: the table shows it escaped, the JSON decodes to it unchanged."""
    path = tmp_path / "hostile.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setattr(cli, "configure_logging", lambda *_args: None)
    assert cli.main(["migrate", "up"]) == 0
    with sqlite3.connect(path) as db:
        when = "2026-01-01 00:00:00"
        db.execute(
            "INSERT INTO orders (id, status, created_at, updated_at) VALUES (1, ?, ?, ?)",
            (HOSTILE_STATUS, when, when),
        )
        db.execute(
            "INSERT INTO stock_reservations (order_id, outcome, created_at) "
            "VALUES (1, 'cancelled', ?)",
            (when,),
        )
    capsys.readouterr()

    assert cli.main(["reconcile"]) == EXIT_FINDINGS
    table = capsys.readouterr().out
    assert "reservation cancelled, order \\u001b]0;owned\\u0007\\u001b[2Jpaid\\u202e" in table
    assert not any(ch in table for ch in "\x1b\x07\u202e")

    assert cli.main(["reconcile", "--json"]) == EXIT_FINDINGS
    raw = capsys.readouterr().out
    assert not any(ch in raw for ch in "\x1b\x07\u202e")
    details = [f["detail"] for f in orjson.loads(raw)["findings"]]
    assert f"reservation cancelled, order {HOSTILE_STATUS}" in details


def test_terminal_safe_keeps_lines_and_text_and_escapes_the_rest() -> None:
    assert cli.terminal_safe("Café 東京\tok\n") == "Café 東京\tok\n"
    assert cli.terminal_safe("a\rb\x00c\x7fd\u200be\U000e0001") == (
        "a\\u000db\\u0000c\\u007fd\\u200be\\udb40\\udc01"
    )


async def test_allowed_hosts_guards_the_services_apps_as_serve_builds_them(tmp_path: Path) -> None:
    """Both apps as `orderstack serve` builds them (bootstrap), with ALLOWED_HOSTS set: a
    configured name with any port is served, another is 400 in the service's style, the
    fast paths included; without it (the default of serve) any host is served."""
    async with running_apps(tmp_path, ALLOWED_HOSTS="api.example.com", AUTH_MODE="off") as apps:
        ours = {"Host": "api.example.com:443"}
        for http in (apps.order_http, apps.product_http):
            assert (await http.get("/livez", headers=ours)).status_code == 200
            assert (await http.get("/livez")).status_code == 400  # Host: test
        refused = await apps.product_http.post(
            "/products", json={"name": "X", "price": 1, "qty": 1}
        )
        assert refused.status_code == 400 and refused.json()["statusCode"] == 400
        refused = await apps.order_http.post("/orders", json={"product_id": 1, "total_price": 1})
        assert refused.status_code == 400 and refused.json()["code"] == "HOST_NOT_ALLOWED"
    async with running_apps(tmp_path, AUTH_MODE="off") as apps:
        assert (await apps.order_http.get("/livez")).status_code == 200
