"""The edge on the real processes: `orderstack serve` replicas on the real servers, and
`orderstack dev` (the embedded default), each probed with raw loopback sockets as the outside
review probed them (issue 22). Small deadlines (1 s) and caps set by env keep each test
within a few seconds. What each bound does, in detail: tests/unit/test_edge_protocol.py."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.balancer import Balancer
from harness.processes import EmbeddedDev
from harness.sandbox import Sandbox
from harness.stack import Stack
from tests.conftest import IN_CI
from tests.e2e.conftest import UNHURRIED

pytestmark = pytest.mark.e2e

MAX_IN_FLIGHT = 8
MAX_CONNECTIONS = 24
TOKEN = "edge-metrics-token"  # noqa: S105 - a throwaway test value
EDGE_ENV = {
    **UNHURRIED,
    "AUTH_MODE": "off",
    "MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
    "HEADER_TIMEOUT_SECONDS": "1",
    "BODY_TIMEOUT_SECONDS": "1",
    "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "METRICS_TOKEN": TOKEN,
}


@dataclass(frozen=True)
class Target:
    """One way the project runs: its two services' ports and the process serving products."""

    name: str
    order_port: int
    product_port: int
    product_pid: int


@pytest.fixture(scope="module")
def edge_stack(
    make_sandbox: Callable[..., Sandbox], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    running = Stack(
        make_sandbox("edge"), tmp_path_factory.mktemp("logs"), extra_env=EDGE_ENV
    ).start()
    try:
        running.wait_ready(timeout=30)
        product = running.products[0]
        assert product.process is not None
        yield Target("serve", running.orders[0].port, product.port, product.process.pid)
    finally:
        running.stop()


@pytest.fixture(scope="module")
def edge_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    site = EmbeddedDev(tmp_path_factory.mktemp("edge-dev"), env=EDGE_ENV)
    process = site.process().start()
    try:
        process.wait_healthy()
        assert process.process is not None
        yield Target("dev", site.order_port, site.product_port, process.process.pid)
    finally:
        process.stop()


@pytest.fixture(params=["serve", "dev"])
def target(request: pytest.FixtureRequest) -> Target:
    fixture = "edge_stack" if request.param == "serve" else "edge_dev"
    found: Target = request.getfixturevalue(fixture)
    return found


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer read off ``sock``: status, headers (lower case), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:])
    }
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split(" ")[1]), headers, body


def closed_by_server(sock: socket.socket) -> bool:
    try:
        while chunk := sock.recv(65536):
            del chunk
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock:
        sock.sendall(raw)
        return answer(sock)


def post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def get(path: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + extra + b"\r\n"


def edge_refusals(port: int, reason: str) -> float:
    """``edge_refusals_total{reason}`` on the /metrics of the service at ``port``."""
    scraped = httpx.get(
        f"http://127.0.0.1:{port}/metrics", headers={"authorization": f"Bearer {TOKEN}"}
    )
    for family in text_string_to_metric_families(scraped.text):
        for sample in family.samples:
            if sample.name == "edge_refusals_total" and sample.labels["reason"] == reason:
                return sample.value
    raise AssertionError(f"no edge_refusals_total{{reason={reason!r}}}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_bodies_that_never_arrive_hold_no_slot_and_are_cut_by_the_body_deadline(
    target: Target,
) -> None:
    """As many sockets as MAX_IN_FLIGHT send a POST's head and no body: the other requests
    are still served (they were all 503 OVERLOADED), then each of them is 408 and closed."""
    stalled = []
    for port, path in [(target.product_port, "/products"), (target.order_port, "/orders")]:
        for _ in range(MAX_IN_FLIGHT):
            sock = connect(port)
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: 40\r\n\r\n".encode()
            )
            stalled.append(sock)
    started = time.monotonic()
    try:
        time.sleep(0.2)
        created = request(
            target.product_port, post("/products", b'{"name":"Edge","price":2,"qty":5}')
        )
        assert created[0] == 201, created
        product_id = orjson.loads(created[2])["id"]
        assert request(target.product_port, get(f"/products/{product_id}"))[0] == 200
        assert request(target.order_port, get("/orders?limit=1"))[0] == 200
        assert request(target.order_port, get("/readyz"))[0] == 200
        for sock in stalled:
            status, headers, body = answer(sock)
            assert status == 408 and headers["connection"] == "close"
            assert orjson.loads(body)["code"] == "REQUEST_TIMEOUT"
            assert closed_by_server(sock)
        assert time.monotonic() - started < 4
    finally:
        for sock in stalled:
            sock.close()


def test_a_huge_header_is_431_and_the_process_does_not_grow(target: Target) -> None:
    before = rss_kib(target.product_pid)
    with connect(target.product_port) as sock:
        sock.sendall(get("/livez", b"X-Big: "))
        try:
            for _ in range(256):  # 16 MiB of one header field
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed mid-send: the answer may still be there to read
        try:
            status, _, body = answer(sock)
            assert status == 431 and orjson.loads(body)["code"] == "HEADERS_TOO_LARGE"
        except ConnectionResetError:
            pass  # the reset of what was dropped overtook the answer: the growth is the point
    grown = rss_kib(target.product_pid) - before
    assert grown < 4096, f"the process grew by {grown} KiB"
    # One just past the default cap (16 KiB), sent whole, is answered 431; the service goes on.
    status, headers, _ = request(
        target.product_port, get("/livez", b"X-Big: " + b"a" * 17000 + b"\r\n")
    )
    assert status == 431 and headers["connection"] == "close"
    assert (
        request(target.product_port, get("/livez", b"X-Fine: " + b"a" * 8000 + b"\r\n"))[0] == 200
    )


def test_a_head_that_does_not_arrive_in_time_is_408_and_closed(target: Target) -> None:
    counted = edge_refusals(target.product_port, "head_timeout")
    started = time.monotonic()
    with connect(target.order_port) as silent, connect(target.product_port) as slow:
        for byte in get("/livez")[:20]:  # a byte every 0.1 s: never idle, never done
            slow.sendall(bytes([byte]))
            time.sleep(0.1)
        for sock in (silent, slow):
            status, _, body = answer(sock)
            assert status == 408 and "headers" in orjson.loads(body).get(
                "message", orjson.loads(body).get("error", "")
            )
            assert closed_by_server(sock)
    assert time.monotonic() - started < 4
    assert edge_refusals(target.product_port, "head_timeout") == counted + 1


def test_connections_past_the_cap_are_refused_and_the_service_goes_on(target: Target) -> None:
    held = [connect(target.product_port) for _ in range(MAX_CONNECTIONS)]
    try:
        status, headers, body = request(target.product_port, get("/livez"))
        assert status == 503 and headers["retry-after"] == "1"
        assert orjson.loads(body)["code"] == "OVERLOADED"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert request(target.product_port, get("/livez"))[0] == 200


def test_metrics_answers_only_its_token_and_a_scrape_storm_is_answered(target: Target) -> None:
    for port in (target.order_port, target.product_port):
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"authorization": "Bearer wrong"}).status_code == 401
        headers = {"authorization": f"Bearer {TOKEN}"}
        with httpx.Client(headers=headers, timeout=10) as client, ThreadPoolExecutor(16) as pool:
            scrapes = list(pool.map(client.get, [url] * 64))
        assert all(s.status_code == 200 for s in scrapes)
        assert "outbox_unsent_events" in scrapes[-1].text


def test_the_body_limit_still_holds(target: Target) -> None:
    big = post("/products", b"x" * 70_000)  # MAX_BODY_BYTES: 64 KiB
    status, _, _ = request(target.product_port, big)
    assert status == 413


def test_haproxy_answers_slow_heads_and_bodies_itself(edge_stack: Target) -> None:
    """The harness's balancer (deploy/haproxy.cfg's lines) with a 0.5 s `timeout
    http-request`: HAProxy's own 408 (HTML, not the replica's JSON) for a head or a body
    that does not arrive, and a request sent whole still goes through."""
    if shutil.which("haproxy") is None:
        if IN_CI:
            pytest.fail("CI needs haproxy (.ci/run installs it)")
        pytest.skip("haproxy is not installed")
    balancer = Balancer(
        {"product": [f"127.0.0.1:{edge_stack.product_port}"]}, request_timeout=0.5
    ).start()
    try:
        port = balancer.ports["product"]
        started = time.monotonic()
        with connect(port) as slow_head, connect(port) as slow_body:
            slow_head.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow_body.sendall(post("/products", b" " * 40)[:-40])  # its head, no body
            for sock in (slow_head, slow_body):
                status, headers, _ = answer(sock)
                assert status == 408 and "text/html" in headers.get("content-type", "")
        assert time.monotonic() - started < 0.95  # before the replica's own 1 s deadline
        whole = post("/products", b'{"name":"Through","price":1,"qty":1}')
        assert request(port, whole)[0] == 201
    finally:
        balancer.stop()
