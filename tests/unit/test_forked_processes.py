"""The suite's forked service processes (harness/processes.py: ForkedProcess, run_command)
behave as the new interpreters they stand for: the same exit code, output, environment,
working directory and arguments, and the same exit code when a signal ends them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import processes
from harness.processes import FORK_VARIABLE, ServiceProcess, run_command

CHILD = "tests.unit.forked_child"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["forked", "new interpreter"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(FORK_VARIABLE, "1" if request.param == "forked" else "0")
    return str(request.param)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def test_a_command_gives_its_exit_code_output_and_errors(
    way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the same as the child's: forked if asked
    done = run_command(["3", "x y"], _env(CHILD_VALUE="seen"), cwd=ROOT, module=CHILD)

    assert done.returncode == 3
    assert done.stdout == f"value=seen cwd={ROOT} argv=['3', 'x y']\n"
    assert done.stderr == "to stderr\n"


def test_the_environment_is_exactly_the_one_given(
    way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("CHILD_VALUE", "the caller's")
    env = {k: v for k, v in _env().items() if k != "CHILD_VALUE"}

    done = run_command(["0"], env, cwd=ROOT, module=CHILD)

    assert done.returncode == 0 and done.stdout.startswith("value=None ")


def test_another_pythonpath_runs_a_new_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child given another PYTHONPATH (a bench A/B on another tree) cannot be forked
    from this one's imports: it is a new interpreter, forking on or not."""
    monkeypatch.setenv(FORK_VARIABLE, "1")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    started: list[str] = []
    monkeypatch.setattr(processes.ForkedProcess, "start", lambda *a, **k: started.append("fork"))

    done = run_command(["0"], _env(), cwd=ROOT, module=CHILD)

    assert done.returncode == 0 and started == []


def test_a_signal_ends_a_service_process_with_the_same_code(
    way: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    child = ServiceProcess("child", ["sleep"], {"PYTHONPATH": str(ROOT)}, tmp_path, module=CHILD)
    child.cwd = ROOT
    child.start()
    assert child.process is not None
    assert isinstance(child.process, processes.ForkedProcess) == (way == "forked")
    deadline = time.monotonic() + 30
    while "to stderr" not in child.tail():  # it runs: both its lines are in its log
        assert child.alive() and time.monotonic() < deadline, child.tail()
        time.sleep(0.02)

    child.process.send_signal(signal.SIGTERM)

    assert child.process.wait(timeout=10) == -signal.SIGTERM
    assert child.process.returncode == child.process.poll() == -signal.SIGTERM
    assert not child.alive()
    assert "argv=['sleep']" in child.tail()


def test_a_command_past_its_timeout_is_killed_and_says_so(
    way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_command(["sleep"], _env(), cwd=ROOT, module=CHILD, timeout=1.5)
    assert time.monotonic() - started < 15


def test_a_process_can_ask_for_a_new_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite forks, a process whose own environment says FORK_VARIABLE=0 is exec'd (a
    test that reads /proc/<pid>/environ needs its own environment there)."""
    monkeypatch.setenv(FORK_VARIABLE, "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    own = {"PYTHONPATH": str(ROOT), FORK_VARIABLE: "0", "CHILD_VALUE": "mine"}
    child = ServiceProcess("child", ["sleep"], own, tmp_path, module=CHILD, cwd=ROOT).start()
    try:
        assert isinstance(child.process, subprocess.Popen)
        deadline = time.monotonic() + 30
        while "to stderr" not in child.tail():
            assert child.alive() and time.monotonic() < deadline, child.tail()
            time.sleep(0.02)
        assert child.process.pid is not None
        environ = Path(f"/proc/{child.process.pid}/environ").read_bytes().split(b"\0")
        assert b"CHILD_VALUE=mine" in environ
    finally:
        child.stop()
