"""The suite's test timeout (tests/conftest.py registers it; tests/unit/test_test_timeouts.py
runs it in a pytest of its own): what pytest-timeout's signal method does, made to end an
asyncio test too."""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
import threading
from types import FrameType
from typing import Any

import pytest

# pytest-timeout's signal method raises its failure from SIGALRM's handler, once, in
# whatever Python code runs then. In an asyncio test that is often a background task's
# step, whose exception the task keeps to itself: the test then waits on for ever, and the
# whole run with it. Here the alarm cancels every task of the running event loop instead (the
# test's own among them), and it comes back every TIMEOUT_AGAIN_SECONDS, raising then, until
# the test has ended, teardown included (a teardown can wait on a task that swallowed its
# cancel).
TIMEOUT_AGAIN_SECONDS = 15.0


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own way
    fired = 0

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        fired += 1
        message = (
            f"{item.nodeid}: still running {settings.timeout:g} s"
            f" + {(fired - 1) * TIMEOUT_AGAIN_SECONDS:g} s after it started"
        )
        sys.stderr.write(f"\n+++ Timeout: {message}; the stacks follow\n")
        faulthandler.dump_traceback(all_threads=True)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            for task in asyncio.all_tasks(loop):
                task.cancel(f"test timeout: {message}")
            if fired == 1:
                # The test's own task, cancelled, ends it. Raising here too, in whatever C
                # code runs, has left CPython 3.11's recursion counter off: the session's
                # next compile() failed with "AST constructor recursion depth mismatch".
                return
        pytest.fail(f"Timeout: {message}")

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout calls it
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout, TIMEOUT_AGAIN_SECONDS)
    return True
