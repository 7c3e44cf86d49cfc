"""Service processes started the way an operator starts them: ``orderstack serve ...``."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import runpy
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

STOP_GRACE = 10.0  # seconds a SIGTERM'd process may take to exit before it is killed
KILL_WAIT = 5.0


class Child(Protocol):
    """What the harness uses of a started process: subprocess.Popen's, or ForkedProcess's."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


def stop_processes(
    processes: Sequence[Child],
    grace: float = STOP_GRACE,
    sig: int = signal.SIGTERM,
) -> None:
    """The one stop of the harness: ``sig`` (SIGTERM) to every process still running, all
    at once, then a wait of ``grace`` seconds shared by them all; kill -9 of whatever is
    left, and a bounded wait for that. Stopping several processes takes the longest of
    their stops, not the sum."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.send_signal(sig)
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=KILL_WAIT)


def stop_process(process: Child | None, grace: float = STOP_GRACE) -> None:
    """stop_processes of one process (None, or one already gone: nothing to do)."""
    if process is not None:
        stop_processes([process], grace)


# Ports for the services the harness starts: below the kernel's ephemeral range (32768 and
# up on Linux), so that no outgoing connection takes one between free_port() and the
# service's bind, and split between pytest-xdist workers (PYTEST_XDIST_WORKER gwN of
# PYTEST_XDIST_WORKER_COUNT), so that two workers never hand out the same one.
PORT_RANGE = range(10000, 25000)
_handed_out: set[int] = set()


def _worker_ports() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    if count <= 1 or index >= count:
        return PORT_RANGE
    span = len(PORT_RANGE) // count
    start = PORT_RANGE.start + index * span
    return range(start, start + span)


def free_port() -> int:
    """A loopback port nothing listens on, not handed out before by this process, from this
    worker's share of PORT_RANGE (tried at random: another run on the machine may be
    using the same range)."""
    ports = _worker_ports()
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free port in {ports} after 200 tries")


@dataclass
class ServiceProcess:
    """One replica. ``command`` is the CLI's arguments, e.g. ["serve", "product"];
    ``cwd`` its working directory (default: the caller's); ``unset_env`` names variables of
    the caller's environment it must not inherit (e.g. ``DATABASE_URL`` for the embedded
    default)."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    process: Child | None = None
    cwd: Path | None = None
    unset_env: tuple[str, ...] = ()
    module: str = "orderstack"  # what ``python -m`` runs (tests run a faulty service)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self, extra_env: dict[str, str] | None = None) -> ServiceProcess:
        inherited = {k: v for k, v in os.environ.items() if k not in self.unset_env}
        env = {
            **inherited,
            **self.env,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "LOG_FORMAT": "json",
            **(extra_env or {}),
        }
        if self.command[:1] == ["serve"] and not AUTH_VARIABLES & env.keys():
            # `serve` refuses to start without keys or an explicit choice: a replica given
            # no keys runs as the seed's, without authentication (tests/e2e/test_auth.py
            # gives keys). `dev` decides by itself (off, on 127.0.0.1).
            env["AUTH_MODE"] = "off"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if forks(env):
            self.process = ForkedProcess.start(
                self.module, self.command, env, self.cwd, self.log_path
            )
            return self
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.command],
            env=env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def wait_healthy(self, timeout: float = 30.0, path: str = "/health") -> None:
        """Wait until the service answers (any status: a dependency may be down on purpose)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}: {self.tail()}"
                )
            try:
                httpx.get(self.url + path, timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} not answering after {timeout}s: {self.tail()}")

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 40.0) -> None:
        """Send ``sig`` and wait for the exit. The wait is longer than a graceful stop's
        bound (SHUTDOWN_GRACE + DRAIN + close, 15 s by default) on a busy machine."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=timeout)

    def stop(self) -> None:
        stop_process(self.process)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# Service processes forked from a server process that has imported the services' code
# already, instead of a new interpreter each (`python -m orderstack ...`): the same
# process, arguments, environment, working directory and log, without the second of CPU
# each start spends importing (a test run starts about 200). The suite turns it on
# (tests/conftest.py sets ORDERSTACK_FORK_SERVICES=1); the harness's own commands (make
# chaos, make bench) start new interpreters, and so does a process given another
# PYTHONPATH than this one's (a bench A/B against another tree).
FORK_VARIABLE = "ORDERSTACK_FORK_SERVICES"
# What the server imports once: the CLI, the services, the drivers and the web server.
FORK_PRELOAD = [
    "orderstack.cli",
    "orderstack.bootstrap",
    "sqlalchemy.dialects.mysql.asyncmy",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "uvicorn",
    "uvloop",
]
_fork_context: multiprocessing.context.ForkServerContext | None = None


def forks(env: dict[str, str]) -> bool:
    """Whether a process with environment ``env`` is forked: the suite turned it on (this
    process's FORK_VARIABLE), the process does not turn it off (its own FORK_VARIABLE=0),
    and it imports from the same PYTHONPATH as this process."""
    return (
        os.environ.get(FORK_VARIABLE) == "1"
        and env.get(FORK_VARIABLE) != "0"
        and env.get("PYTHONPATH") == os.environ.get("PYTHONPATH")
    )


def _forked_main(
    module: str,
    command: list[str],
    env: dict[str, str],
    cwd: str | None,
    out_path: str,
    err_path: str | None,
) -> None:
    """In the forked child: what `python -m <module> <command>` with ``env``, ``cwd``,
    stdout to ``out_path`` and stderr to ``err_path`` (None: the same file) would do."""
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, path in ((1, out_path), (2, err_path or out_path)):
        opened = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [module, *command]
    # A module the server imported already (orderstack.cli) runs again as __main__, as
    # `python -m` runs it; runpy's warning about the copy in sys.modules is not its output.
    warnings.filterwarnings("ignore", message=".* found in sys.modules after import of package")
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class ForkedProcess:
    """A service process forked from the fork server (multiprocessing's forkserver, its
    imports done once per test process), with subprocess.Popen's interface as far as the
    harness uses it (Child). Its exit code is Popen's: the code, or -N for signal N."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process

    @classmethod
    def start(
        cls,
        module: str,
        command: list[str],
        env: dict[str, str],
        cwd: Path | None,
        log: Path,
        err: Path | None = None,
    ) -> ForkedProcess:
        global _fork_context
        if _fork_context is None:
            _fork_context = multiprocessing.get_context("forkserver")
            _fork_context.set_forkserver_preload(FORK_PRELOAD)
        process = _fork_context.Process(
            target=_forked_main,
            args=(module, command, env, str(cwd) if cwd else None, str(log), err and str(err)),
            name=f"{module} {' '.join(command)}",
            # Not waited for at the test process's exit: ended (SIGTERM) instead, as a
            # service a failed test left running should be.
            daemon=True,
        )
        process.start()
        return cls(process)

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run_command(
    args: Sequence[str],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = 60.0,
    module: str = "orderstack",
) -> subprocess.CompletedProcess[str]:
    """`python -m <module> <args>` with exactly ``env``, to its end: its exit code, stdout
    and stderr, as subprocess.run(capture_output=True, text=True) gives them (stdin: none).
    Forked from the fork server when the suite turns it on (ForkedProcess)."""
    argv = [sys.executable, "-m", module, *args]
    if not forks(env):
        return subprocess.run(
            argv,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    with tempfile.TemporaryDirectory(prefix="orderstack-command-") as scratch:
        out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
        out.touch()
        err.touch()
        process = ForkedProcess.start(module, list(args), env, cwd, out, err)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(KILL_WAIT)
            raise subprocess.TimeoutExpired(argv, timeout) from None
        return subprocess.CompletedProcess(argv, code, out.read_text(), err.read_text())


# The variables that point a service at servers: unset, `orderstack dev` is the embedded
# default (SQLite, the local bus, the in-process cache), as `make run` starts it.
SERVER_VARIABLES = (
    "DATABASE_URL",
    "DB_HOST",
    "RABBITMQ_URL",
    "REDIS_URL",
    "REDIS_HOST",
    "PRODUCT_SERVICE_URL",
    "ADMIN_TOKEN",
    "PORT",
    "AUTH_MODE",
    "AUTH_SIGNING_KEY",
    "AUTH_JWKS_URL",
)
AUTH_VARIABLES = frozenset({"AUTH_MODE", "AUTH_SIGNING_KEY", "AUTH_JWKS_URL"})


@dataclass
class EmbeddedDev:
    """`orderstack dev` on ports of its own, with its files (SQLite database, local bus)
    in ``workdir``, inheriting none of the servers' variables. ``env`` adds settings (and
    may name another DATABASE_URL). Each ``process()`` is a new, unstarted process on the
    same files and ports: a restart after a kill finds what the last one left."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    order_port: int = field(default_factory=free_port)
    product_port: int = field(default_factory=free_port)

    @property
    def order_url(self) -> str:
        return f"http://127.0.0.1:{self.order_port}"

    @property
    def product_url(self) -> str:
        return f"http://127.0.0.1:{self.product_port}"

    def process(self, name: str = "dev") -> ServiceProcess:
        env = {
            "ORDER_PORT": str(self.order_port),
            "PRODUCT_PORT": str(self.product_port),
            "DATABASE_URL": f"sqlite:///{self.workdir / 'orderstack.db'}",
            **self.env,
        }
        return ServiceProcess(
            name,
            ["dev"],
            env,
            self.workdir,
            port=self.order_port,
            cwd=self.workdir,
            unset_env=SERVER_VARIABLES,
        )
