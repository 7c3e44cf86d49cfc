"""The operator's one-shot commands fail in one line naming why, never a traceback: bad
arguments are argparse's exit 2, a command that cannot be done (nothing answers) exit 1."""

from __future__ import annotations

import socket

import pytest

from orderstack.cli import main


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "argv",
    [
        ["migrate", "down", "0"],
        ["migrate", "down", "-1"],
        ["migrate", "down", "1_0"],
        ["cache", "warmup", "0"],
        ["cache", "warmup", "9223372036854775808"],
        ["cache", "warmup", "abc"],
    ],
)
def test_bad_arguments_are_refused_by_the_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_command_that_cannot_be_done_says_why_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"mysql://root@127.0.0.1:{_closed_port()}/x")
    monkeypatch.setenv("PRODUCT_SERVICE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_SECONDS", "1")

    migrated = main(["migrate", "up"])
    migrate_err = capsys.readouterr().err
    warmed = main(["cache", "warmup", "5"])
    warmup_err = capsys.readouterr().err

    assert (migrated, warmed) == (1, 1)
    assert migrate_err.startswith("orderstack migrate: ") and "Traceback" not in migrate_err
    assert "orderstack cache: CatalogUnavailable" in warmup_err and "Traceback" not in warmup_err
