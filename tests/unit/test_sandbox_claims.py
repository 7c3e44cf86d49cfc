"""A sandbox's claim on a Redis database names its process: one left by a run that was
killed (a timed-out worker, a Ctrl-C) is taken over at once instead of blocking every later
sandbox for the claim's two-hour expiry (seen: all fifteen held by killed runs, each new
sandbox waiting out its 120 s, a whole make test stalled)."""

from __future__ import annotations

import os
import socket
import subprocess

from harness.sandbox import _claim_value, _holder_gone


def test_a_claim_of_a_live_process_is_held() -> None:
    assert not _holder_gone(_claim_value("os_it_live").encode())


def test_a_claim_of_a_process_that_is_gone_is_free() -> None:
    gone = subprocess.Popen(["true"])  # noqa: S607 - the test's own short-lived process
    gone.wait()

    assert _holder_gone(f"os_it_gone {socket.gethostname()} {gone.pid}".encode())


def test_another_hosts_or_an_older_claim_is_left_to_its_expiry() -> None:
    assert not _holder_gone(f"os_it_far another-host-{os.getpid()} 1".encode())
    assert not _holder_gone(b"os_it_old")  # the form before pids were recorded
    assert not _holder_gone(None)
