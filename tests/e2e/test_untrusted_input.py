"""What comes from outside stays inert, on the real processes (issue 22, item 5): both
services as `orderstack serve` on PostgreSQL and RabbitMQ, and `orderstack dev`.

- `orderstack dev` listens on 127.0.0.1 when HOST is not set and answers only requests
  addressed to this machine's names (a DNS-rebinding page's Host is 400); `serve` takes any.
- `/docs` and `/redoc` load nothing from another site: their scripts and styles are the
  service's own pinned files; DOCS_ENABLED=false takes both away, `/openapi.json` stays.
- The `Link` header of a page of orders is never built from the Host header: under
  PUBLIC_BASE_URL, or relative.
- Product names: NFC, and a NUL (a 500 on PostgreSQL before), a zero-width mark, a bidi
  override or a terminal escape is 400 with nothing stored.
- SQL parameters never reach the logs, even at LOG_LEVEL=DEBUG.
- A message's `x-request-id` with CR/LF never reaches a log line.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aio_pika
import httpx
import orjson
import pytest

from harness.processes import EmbeddedDev, ServiceProcess
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack.messaging.topology import EXCHANGE
from tests.e2e.conftest import UNHURRIED

from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e

PUBLIC = "https://api.example.test"
HOSTILE_HOSTS = ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io"]


@pytest.fixture(scope="module")
def stack(
    make_sandbox: Callable[..., Sandbox], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One product and one order service on PostgreSQL, with a PUBLIC_BASE_URL."""
    env = {**UNHURRIED, "AUTH_MODE": "off", "PUBLIC_BASE_URL": PUBLIC}
    sandbox = make_sandbox("untrusted", "postgresql")
    running = Stack(sandbox, tmp_path_factory.mktemp("logs"), extra_env=env).start()
    try:
        running.wait_ready(timeout=30)
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class Dev:
    site: EmbeddedDev
    process: ServiceProcess

    @property
    def ports(self) -> tuple[int, int]:
        return self.site.product_port, self.site.order_port

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    """`orderstack dev` with HOST unset (empty: its own default), /docs off, DEBUG logs."""
    site = EmbeddedDev(
        tmp_path_factory.mktemp("untrusted-dev"),
        env={"DOCS_ENABLED": "false", "LOG_LEVEL": "DEBUG", "AUTH_MODE": "off"},
    )
    process = site.process().start(extra_env={"HOST": ""})
    try:
        process.wait_healthy()
        yield Dev(site, process)
    finally:
        process.stop()


# -- orderstack dev: this machine only ------------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    """The local addresses listening on TCP ``port`` (Linux's /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_dev_without_host_listens_on_loopback_only(dev: Dev) -> None:
    for port in dev.ports:
        # 127.0.0.1 as /proc writes it (little-endian); not 00000000 (every address).
        assert _listening_addresses(port) == {"0100007F"}, port


async def test_dev_answers_its_own_names_and_refuses_any_other_host(dev: Dev) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for port in dev.ports:
            url = f"http://127.0.0.1:{port}/livez"
            for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"[::1]:{port}"):
                response = await client.get(url, headers={"Host": host})
                assert response.status_code == 200, (host, response.text)
            for host in HOSTILE_HOSTS:
                response = await client.get(url, headers={"Host": host})
                assert response.status_code == 400, (host, response.text)
        # Each service answers in its own error style, and a refused write changed nothing
        # (the fast path of POST /products is behind the check too).
        product_url, order_url = dev.site.product_url, dev.site.order_url
        refused = await client.post(
            f"{product_url}/products",
            json={"name": "Rebound", "price": 1, "qty": 1},
            headers={"Host": "evil.example"},
        )
        assert refused.status_code == 400
        assert refused.json()["statusCode"] == 400
        listed = (await client.get(f"{product_url}/products?limit=100")).json()
        assert all(p["name"] != "Rebound" for p in listed["items"])
        refused = await client.get(f"{order_url}/orders", headers={"Host": "evil.example"})
        assert refused.status_code == 400 and refused.json()["code"] == "HOST_NOT_ALLOWED"


async def test_serve_answers_any_host_unless_configured(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for url in (stack.order_url, stack.product_url):
            response = await client.get(f"{url}/livez", headers={"Host": "evil.example"})
            assert response.status_code == 200


# -- /docs from the service's own files ---------------------------------------------------

_REFERENCES = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


async def test_docs_load_nothing_from_another_site(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for base in (stack.order_url, stack.product_url):
            for page in ("/docs", "/redoc"):
                response = await client.get(f"{base}{page}")
                assert response.status_code == 200, response.text
                assert response.headers["content-type"].startswith("text/html")
                html = response.text
                assert not re.search(r"https?://", html), html  # no CDN, no font, no favicon
                policy = response.headers["content-security-policy"]
                assert "default-src 'none'" in policy and "http" not in policy
                assert "frame-ancestors 'none'" in policy
                references = _REFERENCES.findall(html)
                assert any(r.endswith(".js") for r in references), html
                for reference in references:
                    asset = await client.get(urljoin(f"{base}{page}", reference))
                    assert asset.status_code == 200, reference
                    kind = _TYPES[Path(reference).suffix]
                    assert asset.headers["content-type"].startswith(kind), reference
                    assert len(asset.content) > 100, reference
            swagger = (await client.get(f"{base}/docs")).text
            assert '"validatorUrl": null' in swagger  # no badge fetched from swagger.io
            assert (await client.get(f"{base}/openapi.json")).status_code == 200
            missing = await client.get(f"{base}/docs/assets/..%2Fconfig.py")
            assert missing.status_code == 404


async def test_docs_enabled_false_takes_docs_and_redoc_away(dev: Dev) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for base in (dev.site.order_url, dev.site.product_url):
            for path in ("/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js"):
                assert (await client.get(f"{base}{path}")).status_code == 404, path
            assert (await client.get(f"{base}/openapi.json")).status_code == 200


# -- the Link header ------------------------------------------------------------------------


async def _three_orders(client: httpx.AsyncClient, product_url: str, order_url: str) -> int:
    product = await create_product(client, product_url, "Linked", 1, 10)
    for _ in range(3):
        response = await client.post(
            f"{order_url}/orders", json={"product_id": product["id"], "total_price": 1}
        )
        assert response.status_code == 201, response.text
        await wait_terminal(client, order_url, response.json()["id"])
    return int(product["id"])


async def test_the_link_header_is_under_public_base_url_whatever_the_host(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product_id = await _three_orders(client, stack.product_url, stack.order_url)
        hostile = {"Host": "evil.example"}
        for path in (
            f"/orders?product_id={product_id}&limit=1",
            f"/orders/product/{product_id}?limit=1",
        ):
            response = await client.get(f"{stack.order_url}{path}", headers=hostile)
            assert response.status_code == 200, response.text
            link = response.headers["link"]
            assert link.startswith(f"<{PUBLIC}{path.split('?')[0]}?"), link
            assert link.endswith('>; rel="next"') and "evil" not in link


async def test_the_link_header_is_relative_without_public_base_url(dev: Dev) -> None:
    product_url, order_url = dev.site.product_url, dev.site.order_url
    async with httpx.AsyncClient(timeout=10) as client:
        product_id = await _three_orders(client, product_url, order_url)
        url = f"{order_url}/orders/product/{product_id}?limit=2"
        response = await client.get(url, headers={"Host": f"localhost:{dev.site.order_port}"})
        link = response.headers["link"]
        assert re.fullmatch(rf'</orders/product/{product_id}\?after=\d+&limit=2>; rel="next"', link)
        following = await client.get(urljoin(url, response.links["next"]["url"]))
        assert following.status_code == 200 and len(following.json()) == 1


# -- product names ----------------------------------------------------------------------------

HOSTILE_NAMES = ["Lamp\x00", "Lamp\u200b", "\u202eLamp", "La\x1b[31mmp", "Lamp\ufeff"]


async def _names_are_plain_text(client: httpx.AsyncClient, product_url: str) -> None:
    for name in HOSTILE_NAMES:
        response = await client.post(
            f"{product_url}/products", json={"name": name, "price": 5, "qty": 1}
        )
        assert response.status_code == 400, (name, response.text)
    listed = (await client.get(f"{product_url}/products?limit=100")).json()["items"]
    assert not any(p["name"] in HOSTILE_NAMES for p in listed)
    nfc = "Café crème — 東京"
    created = await create_product(client, product_url, unicodedata.normalize("NFD", nfc), 5, 1)
    assert created["name"] == nfc
    stored = (await client.get(f"{product_url}/products/{created['id']}")).json()
    assert stored["name"] == nfc
    patched = await client.patch(
        f"{product_url}/products/{created['id']}", json={"name": "Lamp\x00"}
    )
    assert patched.status_code == 400, patched.text


async def test_product_names_are_plain_text_on_postgresql(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await _names_are_plain_text(client, stack.product_url)


async def test_product_names_are_plain_text_on_dev(dev: Dev) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await _names_are_plain_text(client, dev.site.product_url)


# -- logs -------------------------------------------------------------------------------------


async def test_sql_parameters_stay_out_of_debug_logs(dev: Dev) -> None:
    secret = f"S3CRET-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, dev.site.product_url, "Plain", 1, 5)
        response = await client.post(
            f"{dev.site.order_url}/orders",
            json={"product_id": product["id"], "total_price": 1},
            headers={"Idempotency-Key": secret},  # stored: a parameter of the INSERT
        )
        assert response.status_code == 201, response.text
        await wait_terminal(client, dev.site.order_url, response.json()["id"])
    log = dev.log()
    assert "\nDEBUG " in log  # the libraries' DEBUG lines are written (aiosqlite's were,
    assert secret not in log  # with every statement's parameters)


def _records(process: ServiceProcess) -> list[dict[str, Any]]:
    records = []
    for line in process.log_path.read_bytes().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


async def test_a_message_request_id_with_cr_lf_never_reaches_a_log_line(stack: Stack) -> None:
    """A malformed message (dead-lettered) and a well-formed one, each with an
    ``x-request-id`` that holds CR/LF: the id is in none of the product service's log
    lines; the dead-lettering is logged, under no request id."""
    malformed, well_formed = (f"crlf-{uuid.uuid4().hex}" for _ in range(2))
    cancelled = {"pattern": "order.cancelled", "data": {"orderId": 2**62, "productId": 1}}
    forged = "forged\r\nlevel: critical"
    connection = await aio_pika.connect(stack.sandbox.amqp_url, timeout=5)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        for message_id, body in ((well_formed, orjson.dumps(cancelled)), (malformed, b"{")):
            await exchange.publish(
                aio_pika.Message(
                    body,
                    message_id=message_id,
                    content_type="application/json",
                    headers={"x-request-id": forged},
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="order.cancelled",
            )
    finally:
        await connection.close()
    [product] = stack.products
    deadline = time.monotonic() + 20
    while True:  # the malformed one is dead-lettered after the other one is taken
        logged = [r for r in _records(product) if r.get("message_id") == malformed]
        if logged:
            break
        assert time.monotonic() < deadline, _records(product)[-20:]
        await asyncio.sleep(0.2)
    assert [r["event"] for r in logged] == ["dead-lettering message"], logged
    assert "request_id" not in logged[0], logged
    assert "forged" not in product.log_path.read_text(errors="replace")
