"""HAProxy (Debian's package) in front of each service's replicas, for the cluster chaos run.

One frontend per service on a port of its own, round robin over the replicas, each checked
on ``GET /readyz`` every half second (two failures take it out, two successes put it back).
A request whose connection a replica refuses (killed, restarting) is sent to another one
(``retries`` with ``option redispatch``); a request a replica had already taken when it
died is not retried, since POST /orders is not idempotent without its key: the client sees
a 502 and may retry it with an ``Idempotency-Key``. The configuration is written to a
temporary file; ``stop()`` is always called (a ``finally``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness.processes import free_port, stop_process

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_config(
    backends: dict[str, tuple[int, list[str]]], *, request_timeout: float = 10.0
) -> str:
    """The configuration for ``{service: (frontend port, ["host:port", ...])}``. A request's
    head and body must arrive within ``request_timeout`` seconds (else 408), and its body is
    buffered before a replica is picked, as in deploy/haproxy.cfg."""
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 30s",
        "    timeout server 30s",
        f"    timeout http-request {round(request_timeout * 1000)}ms",
        "    timeout http-keep-alive 10s",
        "    option http-buffer-request",
        "    retries 2",
        "    option redispatch",
        "    default-server inter 500ms fall 2 rise 2",
    ]
    for name, (port, servers) in backends.items():
        lines += [
            f"frontend {name}",
            f"    bind 127.0.0.1:{port}",
            f"    default_backend {name}",
            f"backend {name}",
            "    balance roundrobin",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
            *(f"    server {name}-{i} {address} check" for i, address in enumerate(servers)),
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Balancer:
    """``Balancer({"order": ["127.0.0.1:8081", ...], ...}).start()``; ``url("order")``."""

    backends: dict[str, list[str]]
    request_timeout: float = 10.0  # seconds a request's head and body have to arrive
    ports: dict[str, int] = field(default_factory=dict)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orderstack-lb-")))
    process: subprocess.Popen[bytes] | None = None

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def config_path(self) -> Path:
        return self.directory / "haproxy.cfg"

    def start(self, timeout: float = 30.0) -> Balancer:
        """Start HAProxy and wait until each frontend has a replica up."""
        self.ports = {name: free_port() for name in self.backends}
        self.config_path.write_text(
            haproxy_config(
                {n: (self.ports[n], s) for n, s in self.backends.items()},
                request_timeout=self.request_timeout,
            )
        )
        check = subprocess.run(
            [HAPROXY, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refuses {self.config_path}: {check.stderr}")
        log = (self.directory / "haproxy.log").open("ab")
        self.process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        for name in self.backends:
            while True:
                try:
                    if httpx.get(f"{self.url(name)}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"haproxy: no {name} replica ready within {timeout}s")
                time.sleep(0.2)
        return self

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)
