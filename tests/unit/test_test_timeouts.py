"""The suite's own timeout (tests/timeouts.py): an asyncio test that hangs while a background
task is busy fails at its timeout, where pytest-timeout's plain signal method leaves it
hanging (its one failure lands in the background task and stays there: the same test
under pytest-timeout alone was still running 20 s past its timeout when it was killed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HANGING = textwrap.dedent(
    """
    import asyncio
    import time

    import pytest


    @pytest.mark.timeout(1)
    async def test_hangs_while_a_background_task_is_busy():
        async def busy():
            while True:
                time.sleep(0.05)  # the alarm lands here nearly every time
                await asyncio.sleep(0)

        task = asyncio.create_task(busy())
        await asyncio.Event().wait()
    """
)


def _run(directory: Path) -> subprocess.CompletedProcess[str]:
    (directory / "test_hanging.py").write_text(HANGING, encoding="utf-8")
    hook = "from tests.timeouts import pytest_timeout_set_timer  # noqa: F401\n"
    (directory / "conftest.py").write_text(hook)
    options = ["-p", "no:cacheprovider", "-o", "asyncio_mode=auto", "-q", "-x"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *options, "test_hanging.py"],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_hanging_asyncio_test_fails_at_its_timeout(tmp_path: Path) -> None:
    run = _run(tmp_path)

    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed" in run.stdout
    assert "test timeout: test_hanging.py::test_hangs_while_a_background_task_is_busy" in (
        run.stdout
    )
