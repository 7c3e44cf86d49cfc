"""Service processes started the way an operator starts them: ``orderstack serve ...``."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STOP_GRACE = 10.0  # seconds a SIGTERM'd process may take to exit before it is killed
KILL_WAIT = 5.0


def stop_processes(
    processes: list[subprocess.Popen[bytes]],
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


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = STOP_GRACE) -> None:
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
    process: subprocess.Popen[bytes] | None = None
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
