"""The HTTP ladder of `make bench`: closed-loop load on one server process at a time, as many
requests as 64 connections keep going, each measured in requests/s, latency p50/p99,
answers other than 2xx and the server process's CPU.

The load tool is ``wrk -t2 -c64 -d<N>s --latency`` when ``wrk`` is installed (a Lua script
sets a POST's method, body and content type), else this module's own aiohttp client run as
a separate process (one process, 64 connections, the same figures):

    python -m harness.http_ladder --url http://127.0.0.1:8000/ --seconds 5

Targets are measured alternating and each keeps the best of its rounds: a shared machine
drifts, and targets measured side by side drift together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import httpx
import uvloop

from harness.processes import free_port, stop_process

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONNECTIONS = 64
WRK_THREADS = 2
Tool = Literal["auto", "wrk", "aiohttp"]


@dataclass
class Target:
    """One thing to load: ``name`` keys the results; ``server_pid`` is the process whose
    CPU is reported (None: not on this machine, or not found)."""

    name: str
    url: str
    method: str = "GET"
    body: str | None = None  # JSON, sent with Content-Type: application/json
    server_pid: int | None = None


def cpu_ticks(pid: int) -> int:
    """A process's CPU time so far in clock ticks (user + system), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def choose_tool(choice: Tool = "auto") -> Literal["wrk", "aiohttp"]:
    if choice == "aiohttp":
        return "aiohttp"
    if shutil.which("wrk"):
        return "wrk"
    if choice == "wrk":
        raise RuntimeError("wrk is not installed (apt-get install wrk), or use the aiohttp client")
    return "aiohttp"


def listening_pid(url: str) -> int | None:
    """The process listening on ``url``'s port on this machine (loopback URLs only), found
    through /proc; None when there is none or it is not visible (another user, a container)."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):  # noqa: S104
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def process_name(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


# --- wrk ----------------------------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> dict[str, Any]:
    """wrk's report as figures: requests, requests_per_second, p50_ms, p99_ms, non_2xx
    (wrk counts answers that are neither 2xx nor 3xx), socket_errors by kind."""
    found: dict[str, Any] = {"non_2xx": 0, "socket_errors": {}}
    if match := re.search(r"Requests/sec:\s+([\d.]+)", output):
        found["requests_per_second"] = round(float(match[1]), 1)
    if match := re.search(r"(\d+) requests in ([\d.]+)(\w+),", output):
        found["requests"] = int(match[1])
    for point, value, unit in re.findall(
        r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M
    ):
        found[f"p{point}_ms"] = round(float(value) * _UNIT_MS[unit], 3)
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        found["non_2xx"] = int(match[1])
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        kinds = ("connect", "read", "write", "timeout")
        found["socket_errors"] = {k: int(v) for k, v in zip(kinds, match.groups(), strict=True)}
    missing = {"requests_per_second", "p50_ms", "p99_ms"} - set(found)
    if missing:
        raise ValueError(f"wrk's output lacks {sorted(missing)}:\n{output}")
    return found


def _wrk(target: Target, seconds: int) -> dict[str, Any]:
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    with tempfile.TemporaryDirectory(prefix="orderstack-wrk-") as scratch:
        if target.method != "GET" or target.body is not None:
            script = Path(scratch) / "request.lua"
            lines = [f'wrk.method = "{target.method}"']
            if target.body is not None:
                lines += [
                    f"wrk.body = {_lua_string(target.body)}",
                    'wrk.headers["Content-Type"] = "application/json"',
                ]
            script.write_text("\n".join(lines) + "\n")
            command += ["-s", str(script)]
        done = subprocess.run(
            [*command, target.url], capture_output=True, text=True, timeout=seconds + 60
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def _lua_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


# --- the aiohttp client (when wrk is missing) ---------------------------------------------


def _aiohttp(target: Target, seconds: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "harness.http_ladder", "--url", target.url]
    command += ["--seconds", str(seconds), "--method", target.method]
    if target.body is not None:
        command += ["--body", target.body]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"the aiohttp client failed ({done.returncode}): {done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def closed_loop(
    url: str, seconds: float, method: str = "GET", body: str | None = None
) -> dict[str, Any]:
    """CONNECTIONS workers, each sending its next request when the last one answered,
    for ``seconds``; latency is each request's own round trip (a closed loop has no
    schedule to fall behind)."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    data = body.encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        started = time.monotonic()
        deadline = started + seconds

        async def worker() -> None:
            while time.monotonic() < deadline:
                sent = time.perf_counter()
                try:
                    async with session.request(method, url, data=data, headers=headers) as r:
                        await r.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - sent)
                statuses[r.status] += 1

        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        elapsed = time.monotonic() - started
    ordered = sorted(latencies)

    def point(p: int) -> float:
        return round(ordered[min(len(ordered) - 1, len(ordered) * p // 100)] * 1000, 3)

    return {
        "requests": len(latencies),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": point(50) if ordered else 0.0,
        "p99_ms": point(99) if ordered else 0.0,
        "non_2xx": sum(n for status, n in statuses.items() if not 200 <= status < 300),
        "socket_errors": dict(errors),
    }


# --- the ladder ---------------------------------------------------------------------------


def measure(target: Target, seconds: int, tool: Literal["wrk", "aiohttp"]) -> dict[str, Any]:
    """One closed-loop run on ``target``: the tool's figures plus the server process's CPU %
    and the load tool's own (both over the run's wall time; 100 % is one core)."""
    ticks = cpu_ticks(target.server_pid) if target.server_pid else 0
    client = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    found = _wrk(target, seconds) if tool == "wrk" else _aiohttp(target, seconds)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_seconds = after.ru_utime + after.ru_stime - client.ru_utime - client.ru_stime
    found["client_cpu_percent"] = round(100 * client_seconds / elapsed, 1)
    found["server_cpu_percent"] = (
        round(100 * (cpu_ticks(target.server_pid) - ticks) / CLOCK_TICKS / elapsed, 1)
        if target.server_pid
        else None
    )
    found["errors"] = found["non_2xx"] + sum(found["socket_errors"].values())
    return found


def run_ladder(
    targets: list[Target], seconds: int, rounds: int = 3, tool: Tool = "auto"
) -> dict[str, Any]:
    """Every target ``rounds`` times, alternating; each keeps its best round (most
    requests/s) and lists every round's requests/s in ``rounds_per_second``."""
    chosen = choose_tool(tool)
    best: dict[str, dict[str, Any]] = {}
    every: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(rounds):
        for target in targets:
            found = measure(target, seconds, chosen)
            every[target.name].append(found["requests_per_second"])
            if target.name not in best or (
                found["requests_per_second"] > best[target.name]["requests_per_second"]
            ):
                best[target.name] = found
    results: dict[str, Any] = {}
    for target in targets:
        results[target.name] = {
            **best[target.name],
            "request": f"{target.method} {target.url}",
            "server_process": process_name(target.server_pid),
            "rounds_per_second": every[target.name],
        }
    return {
        "tool": chosen,
        "command": (
            f"wrk -t{WRK_THREADS} -c{CONNECTIONS} -d{seconds}s --latency"
            if chosen == "wrk"
            else f"python -m harness.http_ladder (aiohttp, {CONNECTIONS} connections, {seconds} s)"
        ),
        "seconds": seconds,
        "rounds": rounds,
        "connections": CONNECTIONS,
        "results": results,
    }


def describe(found: dict[str, Any] | None) -> str:
    """One cell of a table: requests/s, p50/p99 and the server's CPU."""
    if not found:
        return "-"
    cpu = found.get("server_cpu_percent")
    text = (
        f"{found['requests_per_second']:,.0f}/s p50 {found['p50_ms']:g} "
        f"p99 {found['p99_ms']:g} ms, cpu {'?' if cpu is None else f'{cpu:g}'} %"
    )
    return text + (f", {found['errors']} errors" if found.get("errors") else "")


# --- the bare FastAPI endpoint ------------------------------------------------------------


class BareServer:
    """harness/bare_app.py in its own process on a free port, answering ``body`` at ``/``."""

    def __init__(self, body: str, log_path: Path | None = None) -> None:
        self.body = body
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 30.0) -> BareServer:
        env = {**os.environ, "BARE_JSON": self.body, "PORT": str(self.port)}
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "harness.bare_app"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            if self.log_path and not isinstance(log, int):
                log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the bare app exited with {self.process.returncode}")
            try:
                if httpx.get(self.url, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bare app not answering after {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> BareServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """The aiohttp client: one closed-loop run, its figures as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m harness.http_ladder", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", help="a JSON body (sent as application/json)")
    args = parser.parse_args(argv)
    found = uvloop.run(closed_loop(args.url, args.seconds, args.method, args.body))
    print(json.dumps(found))


if __name__ == "__main__":
    main()
